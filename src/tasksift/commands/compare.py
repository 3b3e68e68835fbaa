"""``tasksift compare A B``: overlap of two selections (output folders of ``tasksift select``).

Each folder (or a ``manifest.json`` path directly) must hold ``manifest.json`` with
``selected_ids`` (example ids) and ``method``. Prints |A|, |B|, |A ∩ B|, the Jaccard index
|A ∩ B| / |A ∪ B| and the fraction of each in the other; ``--json PATH`` also writes them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import DataError


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a selection folder (or a manifest file), checked for
    ``selected_ids`` (a list of strings) and ``method``."""
    p = Path(path)
    f = p / "manifest.json" if p.is_dir() else p
    if not p.exists():
        raise DataError("selection folder not found", file=str(path))
    if not f.is_file():
        raise DataError("no manifest.json in the selection folder (is it an output of `tasksift select`?)",
                        file=str(path))
    try:
        man = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"manifest is not valid JSON ({e.msg} at line {e.lineno})", file=str(f)) from None
    except UnicodeDecodeError:
        raise DataError("manifest is not UTF-8 text", file=str(f)) from None
    if not isinstance(man, dict):
        raise DataError("manifest must be a JSON object", file=str(f))
    for key in ("selected_ids", "method"):
        if key not in man:
            raise DataError(f"manifest has no '{key}'", file=str(f))
    ids = man["selected_ids"]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DataError("manifest 'selected_ids' must be a list of example id strings", file=str(f))
    return man


def overlap(a: list[str], b: list[str]) -> dict[str, Any]:
    """Sizes, intersection, Jaccard and containment fractions of two id lists (as sets)."""
    sa, sb = set(a), set(b)
    inter = len(sa & sb)
    union = len(sa | sb)
    return {"size_a": len(sa), "size_b": len(sb), "intersection": inter, "union": union,
            "jaccard": inter / union if union else 1.0,
            "fraction_a_in_b": inter / len(sa) if sa else 0.0,
            "fraction_b_in_a": inter / len(sb) if sb else 0.0}


def handler(args: argparse.Namespace) -> int:
    ma, mb = read_manifest(args.a), read_manifest(args.b)
    res = {"a": {"path": str(args.a), "method": ma["method"]},
           "b": {"path": str(args.b), "method": mb["method"]},
           **overlap(ma["selected_ids"], mb["selected_ids"])}
    print(f"A: {args.a} ({ma['method']}, {res['size_a']} rows)")
    print(f"B: {args.b} ({mb['method']}, {res['size_b']} rows)")
    print(f"|A ∩ B| = {res['intersection']}   Jaccard = {res['jaccard']:.4f}   "
          f"fraction of A in B = {res['fraction_a_in_b']:.4f}   fraction of B in A = {res['fraction_b_in_a']:.4f}")
    if args.json:
        from ..atomic import write_json

        write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("compare", help="overlap of two selections (output folders of `tasksift select`)",
                              description="Compare two selections: |A ∩ B|, Jaccard index and the fraction "
                                          "of each selection found in the other.")
    p.add_argument("a", help="first selection folder (or its manifest.json)")
    p.add_argument("b", help="second selection folder (or its manifest.json)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the numbers as JSON to PATH")
    p.set_defaults(func=handler)
