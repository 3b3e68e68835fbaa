"""The ``tasksift`` command line: a thin layer over the Python API.

Subcommands: ``select``, ``methods``, ``demo``, plus every module in
:mod:`tasksift.commands` (each adds itself with ``register(subparsers)``).
"""
from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import pkgutil
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .errors import ConfigError, SelectionWarning, TasksiftError


def _load_config_file(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    from .yamlfile import read_yaml

    data = read_yaml(path, "config file") or {}
    if not isinstance(data, dict):
        raise ConfigError("config file must hold a mapping of options", file=path)
    return data


def _parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``-o alpha=0.3 -o sigma=0`` -> {"alpha": 0.3, "sigma": 0} (values parsed as YAML)."""
    import yaml

    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise ConfigError(f"bad option {p!r}: expected name=value")
        k, v = p.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def add_select_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", help="pool: file (.json/.jsonl/.csv/.tsv/.parquet), folder, HF dataset folder or hub id")
    p.add_argument("--target", help="target examples of the task (same kinds of input as --pool)")
    p.add_argument("--method", "-m", default=None,
                   help="method name (see `tasksift methods`) or recipe, e.g. 'dedup -> tsds' (default tsds)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--ratio", type=float, help="fraction of the pool to select, e.g. 0.01")
    g.add_argument("--count", type=int, help="number of rows to select")
    g.add_argument("--tokens", type=int, help="total size of the subset in whitespace-separated words")
    p.add_argument("--out", "-O", help="output folder (subset + manifest.json)")
    p.add_argument("--format", choices=["json", "jsonl", "csv", "tsv", "parquet", "hf"],
                   help="output format (default: the pool's own; jsonl for a folder of several files)")
    p.add_argument("--export", choices=["messages", "sharegpt", "alpaca", "llamafactory"], default=None,
                   help="write the subset in this training layout whatever the pool mixed (jsonl unless --format "
                        "json|parquet); llamafactory adds dataset_info.json")
    p.add_argument("--keep-duplicates", action="store_true", default=None,
                   help="keep pool rows that repeat earlier content as candidates (default: each content once)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--config", help="YAML file with any of these settings, plus method options under 'options:'")
    p.add_argument("-o", "--option", action="append", default=[], metavar="NAME=VALUE",
                   help="method option, repeatable (e.g. -o alpha=0.3); `tasksift methods NAME` lists a method's options")
    p.add_argument("--group-by", help="split the budget by this row field (or 'source'), quotas proportional")
    p.add_argument("--quotas", default=None, help="'proportional' (default), 'equal' or JSON {group: fraction|count}")
    p.add_argument("--layout", default=None, help="pool layout (default auto-detect)")
    p.add_argument("--fields", default=None, help="pool fields when detection cannot, e.g. prompt=q,response=a")
    p.add_argument("--target-layout", default=None)
    p.add_argument("--target-fields", default=None)
    p.add_argument("--split", default=None, help="split of a Hugging Face dataset (default train)")
    p.add_argument("--skip-bad", action="store_true", default=None,
                   help="skip malformed rows (counted in the summary and manifest) instead of failing")
    p.add_argument("--embed-model", default=None, help="sentence-transformers model id or path (default bundled all-MiniLM-L6-v2)")
    p.add_argument("--embed-text", choices=["text", "prompt", "response"], default=None,
                   help="what to embed (default text = prompt + response)")
    p.add_argument("--embed-max-tokens", type=int, default=None,
                   help="truncate texts to this many tokens when embedding (default: the model's, 256 for MiniLM; 128 is ~2x faster)")
    p.add_argument("--embed-dtype", choices=["auto", "float32", "bfloat16", "float16", "int8"], default=None,
                   help="embedding precision (default auto: bfloat16 on CPUs with native bfloat16 and on GPUs "
                        "that have it, float16 on other GPUs, else float32; int8: dynamic quantisation, CPU)")
    p.add_argument("--embed-runtime", choices=["torch", "onnx", "openvino"], default=None,
                   help="embedding runtime (default torch; onnx/openvino need pip install 'tasksift[onnx]' / '[openvino]')")
    p.add_argument("--embed-threads", type=int, default=None, help="CPU threads for embedding (default torch's)")
    p.add_argument("--embed-batch-size", type=int, default=None,
                   help="rows per embedding batch (default 64 on CPU, sized to fill a GPU, 2048 for static models)")
    p.add_argument("--estimate", action="store_true",
                   help="print rows, unique rows, rows already cached and the estimated time and memory per "
                        "stage (from a small measured sample), then exit without computing features")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, ...")
    p.add_argument("--cache-dir", default=None, help="feature cache (default $TASKSIFT_CACHE or ~/.cache/tasksift)")
    p.add_argument("--no-progress", action="store_true", default=None, help="hide progress bars")
    p.add_argument("--no-report", action="store_true", default=None,
                   help="write neither report.html nor the tasksift_nearest_target columns (skips their cost)")
    p.add_argument("--backend", choices=["local", "processes", "ray"], default=None,
                   help="where features (and TSDS neighbour search + KDE) are computed: in this process (default), "
                        "in worker processes on this machine, or on Ray")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (processes: default one per core) or Ray actors (default: one per GPU, else per CPU)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default $RAY_ADDRESS or a local cluster)")


SELECT_KEYS = ("pool", "target", "method", "ratio", "count", "tokens", "out", "format", "export",
               "keep_duplicates", "seed",
               "group_by", "quotas", "layout", "fields", "target_layout", "target_fields", "split",
               "skip_bad", "embed_model", "embed_text", "embed_max_tokens", "embed_dtype", "embed_runtime",
               "embed_threads", "embed_batch_size", "device", "cache_dir", "no_progress", "backend",
               "workers", "ray_address", "no_report")


def _setting_table() -> dict[str, Any]:
    """What each select setting accepts (flags and --config keys alike): checked before any
    data is read, each failure one line naming the flag."""
    from .features.embed_models import DTYPES, RUNTIMES
    from .methods.params import Choices, Interval, Option

    table = {k: Option(None, "", str, None) for k in SELECT_KEYS}
    table.update({
        "method": Option(None, "", str, list, dict, None),
        "ratio": Option(None, "", Interval(float, 0, 1, "right"), None),
        "count": Option(None, "", Interval(int, 1), None),
        "tokens": Option(None, "", Interval(int, 1), None),
        "seed": Option(None, "", Interval(int, 0, 2**32 - 1), None),
        "workers": Option(None, "", Interval(int, 1), None),
        "embed_max_tokens": Option(None, "", Interval(int, 1), None),
        "embed_threads": Option(None, "", Interval(int, 1), None),
        "embed_batch_size": Option(None, "", Interval(int, 1), None),
        "embed_dtype": Option(None, "", Choices(*DTYPES), None),
        "embed_runtime": Option(None, "", Choices(*RUNTIMES), None),
        "skip_bad": Option(None, "", bool, None),
        "keep_duplicates": Option(None, "", bool, None),
        "export": Option(None, "", Choices("messages", "sharegpt", "alpaca", "llamafactory"), None),
        "no_progress": Option(None, "", bool, None),
        "no_report": Option(None, "", bool, None),
        "quotas": Option(None, "", str, dict, None),
        "fields": Option(None, "", str, dict, None),
        "format": Option(None, "", Choices("json", "jsonl", "csv", "tsv", "parquet", "hf"), None),
        "backend": Option(None, "", Choices("local", "processes", "ray"), None),
        "embed_text": Option(None, "", Choices("text", "prompt", "response"), None),
        "target_fields": Option(None, "", str, dict, None),
    })
    return table


def check_settings(s: dict[str, Any], from_file: set[str] = frozenset(), config_file: str | None = None) -> None:
    """One ConfigError for the first setting of the wrong type or out of range, e.g.
    ``--count must be an integer >= 1, got 'five'``; ``from_file`` names the keys that came
    from ``config_file`` (the message then names the file)."""
    for key, opt in _setting_table().items():
        if key in s and not opt.allows(s[key]):
            what = f"'{key}' in the config file" if key in from_file else f"--{key.replace('_', '-')}"
            raise ConfigError(f"{what} must be {opt.describe().replace(' or null', '')}, got {s[key]!r}",
                              file=config_file if key in from_file else None)


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line flags override the --config file; the file's 'options' feed the method."""
    cfg = _load_config_file(args.config)
    unknown = set(cfg) - set(SELECT_KEYS) - {"options", "steps"}
    if unknown:
        raise ConfigError(f"unknown setting(s) {sorted(unknown)}", file=args.config)
    if "options" in cfg and cfg["options"] is not None and not isinstance(cfg["options"], dict):
        raise ConfigError(f"'options' must be a mapping of method options, got {cfg['options']!r}",
                          file=args.config)
    if "steps" in cfg:    # a recipe written at the top level, as the README shows
        if cfg.get("method") is not None:
            raise ConfigError("give the recipe as 'steps:' or as 'method:', not both", file=args.config)
        cfg = {**{k: v for k, v in cfg.items() if k != "steps"}, "method": {"steps": cfg["steps"]}}
    s = {k: cfg.get(k) for k in SELECT_KEYS}
    from_file = {k for k in SELECT_KEYS if cfg.get(k) is not None}
    for k in SELECT_KEYS:
        v = getattr(args, k, None)
        if v is not None:
            s[k] = v
            from_file.discard(k)
    check_settings(s, from_file, args.config)
    if sum(s.get(k) is not None for k in ("ratio", "count", "tokens")) > 1:
        raise ConfigError("give one of --ratio, --count, --tokens")
    s["options"] = {**(cfg.get("options") or {}), **_parse_options(args.option)}
    s["method"] = s["method"] or "tsds"
    s["seed"] = 0 if s["seed"] is None else s["seed"]
    for req in ("pool", "target") if getattr(args, "estimate", False) else ("pool", "target", "out"):
        if not s.get(req):
            raise ConfigError(f"--{req} is required (on the command line or in --config)")
    if s.get("ratio") is None and s.get("count") is None and s.get("tokens") is None:
        raise ConfigError("give a budget: --ratio R, --count N or --tokens T")
    q = s.get("quotas")
    if isinstance(q, str) and q not in ("proportional", "equal"):
        try:
            s["quotas"] = json.loads(q)
        except json.JSONDecodeError:
            raise ConfigError(f"--quotas must be 'proportional', 'equal' or JSON, got {q!r}") from None
    return s


def resolve_method(method: Any, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The method name or recipe as one readable string (``"dedup(threshold=0.9) -> tsds"``)
    and the options for it, checked against the (last) method's option table: a bad option
    fails here, before any data is read. A one-step recipe (``tsds(alpha=0.3)``, ``steps:
    [knn]``) becomes its method name with the step's options merged under ``options``."""
    from .methods.registry import get_method
    from .recipe import parse_recipe

    if isinstance(method, str) and not any(t in method for t in ("->", "(")) \
            and not method.lower().endswith((".yaml", ".yml")):
        get_method(method)(**options)
        return method, options
    recipe = parse_recipe(method)
    last = recipe.steps[-1]
    merged = {**last.options, **options}
    get_method(last.name)(**merged)
    if len(recipe.steps) == 1:
        return last.name, merged
    return recipe.describe(), options


def embed_config(s: dict[str, Any]) -> "Any":
    """The EmbedConfig of resolved select settings."""
    from .features.embed import EmbedConfig

    return EmbedConfig(model=s.get("embed_model") or "default", text=s.get("embed_text") or "text",
                       max_tokens=s.get("embed_max_tokens"), device=s.get("device") or "auto",
                       dtype=s.get("embed_dtype") or "auto", runtime=s.get("embed_runtime") or "torch",
                       threads=s.get("embed_threads"), batch_size=s.get("embed_batch_size"))


def run_estimate(s: dict[str, Any]) -> "Any":
    """``select --estimate``: the cost of the run these settings describe, nothing computed."""
    from .estimate import estimate_select

    if s.get("tokens") is not None:
        raise ConfigError("--estimate takes --ratio or --count (a token budget is not estimated)")
    load = {"layout": s.get("layout") or "auto", "fields": s.get("fields"), "skip_bad": bool(s.get("skip_bad")),
            "split": s.get("split")}
    tload = {**load, "layout": s.get("target_layout") or "auto", "fields": s.get("target_fields")}
    return estimate_select(s["pool"], s["target"], s["method"], k=s.get("count"), ratio=s.get("ratio"),
                           config=s["options"], embed=embed_config(s), cache_dir=s.get("cache_dir"),
                           seed=s["seed"], load_kwargs=load, target_load_kwargs=tload)


def run_select(s: dict[str, Any]) -> "Any":
    from .api import select
    from .data.writers import check_writable

    from .data.export import check_export

    method, options = resolve_method(s["method"], dict(s.get("options") or {}))
    s = {**s, "method": method, "options": options}
    check_export(s.get("export"), s.get("format"))   # a format the export cannot use: before any work
    check_writable(s["out"])
    embed = embed_config(s)
    sel = select(s["pool"], s["target"], method=s["method"], count=s.get("count"), ratio=s.get("ratio"),
                 tokens=s.get("tokens"), seed=s["seed"], config=s["options"], group_by=s.get("group_by"),
                 quotas=s.get("quotas") or "proportional", embed=embed, cache_dir=s.get("cache_dir"),
                 progress=not s.get("no_progress"), skip_bad=bool(s.get("skip_bad")),
                 pool_layout=s.get("layout") or "auto", pool_fields=s.get("fields"),
                 target_layout=s.get("target_layout") or "auto", target_fields=s.get("target_fields"),
                 split=s.get("split"), backend=s.get("backend") or "local", num_workers=s.get("workers"),
                 ray_address=s.get("ray_address"), distinct=not s.get("keep_duplicates"),
                 explain=not s.get("no_report"))
    path = sel.save(s["out"], s.get("format"), export=s.get("export"), report=not s.get("no_report"))
    return sel, path


def print_summary(sel: Any, path: Path, out=None) -> None:
    out = out or sys.stdout
    n, k = len(sel.pool), len(sel.indices)
    print(f"tasksift {sel.method}: selected {k} of {n} pool rows ({100 * k / max(1, n):.2f}%) "
          f"for {len(sel.target)} target examples, seed {sel.seed}", file=out)
    if sel.pool.skipped or sel.target.skipped:
        print(f"  skipped bad rows: pool {len(sel.pool.skipped)}, target {len(sel.target.skipped)} "
              f"(listed in manifest.json)", file=out)
    mix = sel.source_mix()
    if len(mix) > 1 or next(iter(mix), None) != Path(sel.pool.path).name:
        print("  selected by source:", file=out)
        for src, c in list(mix.items())[:10]:
            print(f"    {c:7d}  {100 * c / k:5.1f}%  {src}", file=out)
    for key in ("support_size", "filled", "fill_rule", "ann_recall", "index"):
        if key in sel.info:
            print(f"  {key}: {sel.info[key]}", file=out)
    if sel.info.get("duplicates_collapsed"):
        print(f"  duplicates collapsed: {sel.info['duplicates_collapsed']} pool rows repeat earlier content; "
              f"each content was a candidate once (--keep-duplicates keeps them)", file=out)
    elif sel.info.get("duplicates_kept"):
        print(f"  duplicates kept: {sel.info['duplicates_kept']} pool rows repeat earlier content and were "
              f"candidates too (the subset may hold the same content more than once)", file=out)
    t = ", ".join(f"{k} {v:.1f}s" for k, v in sel.timings.items())
    print(f"  time: {t}", file=out)
    extra = [f for f in sel.output_files if f not in (Path(path).name, "manifest.json")]
    also = "".join(f", {Path(path).parent / f}" for f in extra)
    print(f"  wrote {path}{also} and {Path(path).parent / 'manifest.json'}", file=out)


def print_warnings(sel: Any, out=None) -> None:
    """One ``tasksift: warning:`` line per warning the selection recorded (shortfall, target
    examples in the pool); the manifest keeps them too."""
    for line in sel.info.get("warnings", []):
        print(f"tasksift: warning: {line}", file=out or sys.stderr)


def cmd_select(args: argparse.Namespace) -> int:
    if args.estimate:
        print(run_estimate(resolve_settings(args)).table())
        return 0
    sel, path = run_select(resolve_settings(args))
    print_summary(sel, path)
    print_warnings(sel)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .data.demo import write_demo_data

    out = Path(args.out)
    pool, target = write_demo_data(out / "data", seed=args.seed)
    print(f"demo data: {pool} ({sum(1 for _ in open(pool))} rows, 6 task types), "
          f"{target} ({sum(1 for _ in open(target))} target rows: math word problems)")
    s = {"pool": str(pool), "target": str(target), "method": args.method, "ratio": args.ratio,
         "out": str(out / "selection"), "seed": args.seed, "options": {}, "cache_dir": args.cache_dir,
         "no_progress": args.no_progress, "embed_model": args.embed_model}
    sel, path = run_select(s)
    print_summary(sel, path)
    print_warnings(sel)
    math_share = sum(1 for ex in sel.subset if ex.raw.get("task") == "math") / len(sel.indices)
    print(f"  share of selected rows that are math word problems: {100 * math_share:.0f}% "
          f"(random would give ~{100 * sum(1 for ex in sel.pool.examples if ex.raw.get('task') == 'math') / len(sel.pool):.0f}%)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tasksift", description="Pick the training data worth fine-tuning on for one task.")
    parser.add_argument("--version", action="version", version=f"tasksift {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("select", help="select a subset of a pool for a target task",
                       description="Select a subset of --pool for the task shown by --target. "
                                   "Writes the subset in the pool's own format with tasksift_* score "
                                   "columns, report.html (why these rows) and manifest.json.")
    add_select_args(p)
    p.set_defaults(func=cmd_select)
    p = sub.add_parser("demo", help="write the built-in example pool and target, then select from it")
    p.add_argument("--out", default="demo-out", help="folder for demo data and selection (default demo-out)")
    p.add_argument("--method", default="tsds")
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embed-model", default=None, help="embedding model (default the bundled all-MiniLM-L6-v2)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
    from . import commands

    for mod in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"tasksift.commands.{mod.name}").register(sub)
    return parser


#: Write failures that are the machine's state, not a bug: one line, exit 2.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            # a selection's warnings are printed as one `tasksift: warning:` line each
            warnings.simplefilter("ignore", SelectionWarning)
            return int(args.func(args) or 0)
    except TasksiftError as e:
        print(f"tasksift: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"tasksift: error: cannot write{where}: {e.strerror or os.strerror(e.errno)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tasksift: interrupted (finished feature shards are cached; rerun to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
