"""``tasksift lobass``: LoBaSS learnability selection with the reference model spelled out.

The same as ``tasksift select --method lobass`` (every select flag works), with flags for
where the reference model comes from: ``--reference MODEL`` (a fine-tuned model: hub id,
folder or .gguf), ``--reference-adapter DIR`` (a PEFT adapter on the base model), or,
when neither is given, a LoRA fine-tune of the base made here on ``--ref-sample`` pool rows
for ``--ref-steps`` steps (default: one epoch). ``--model`` picks the base model.
"""
from __future__ import annotations

import argparse
from typing import Any

#: flag name -> lobass option
_FLAGS = {"model": "model", "reference": "ref_model", "reference_adapter": "ref_adapter",
          "ref_sample": "ref_sample", "ref_steps": "ref_steps", "ref_lr": "ref_lr", "max_length": "max_length"}


def register(subparsers: Any) -> None:
    """Add the ``lobass`` subcommand."""
    from ..cli import add_select_args

    p = subparsers.add_parser(
        "lobass", help="LoBaSS: select by learnability 1 - L_ref/L_base (fine-tunes the reference if needed)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_select_args(p)
    p.set_defaults(method="lobass")
    g = p.add_argument_group("LoBaSS")
    g.add_argument("--model", default=None, help="base model: 'default' (SmolLM2-135M-Instruct), hub id, folder or .gguf")
    r = g.add_mutually_exclusive_group()
    r.add_argument("--reference", default=None, help="a fine-tuned reference model (hub id, folder or .gguf)")
    r.add_argument("--reference-adapter", default=None, help="a PEFT adapter folder applied to the base as reference")
    g.add_argument("--ref-sample", type=int, default=None,
                   help="pool rows the reference LoRA is fine-tuned on when no reference is given (default 1000)")
    g.add_argument("--ref-steps", type=int, default=None, help="optimizer steps of that fine-tune (default: one epoch)")
    g.add_argument("--ref-lr", type=float, default=None, help="learning rate of that fine-tune (default 2e-4)")
    g.add_argument("--max-length", type=int, default=None, help="tokens per example for the losses (default 1024)")
    p.set_defaults(func=cmd_lobass)


def cmd_lobass(args: argparse.Namespace) -> int:
    from ..cli import print_summary, resolve_settings, run_select
    from ..errors import ConfigError

    s = resolve_settings(args)
    if s["method"] != "lobass":
        raise ConfigError(f"tasksift lobass runs the lobass method; got --method {s['method']!r} "
                          f"(use tasksift select for other methods)")
    for flag, opt in _FLAGS.items():
        v = getattr(args, flag, None)
        if v is not None:
            s["options"][opt] = v
    sel, path = run_select(s)
    print_summary(sel, path)
    ref = sel.info.get("reference")
    if isinstance(ref, dict):
        print(f"  reference: {ref.get('kind')}" + (f" ({ref.get('adapter') or ref.get('model')})"
                                                   if ref.get("adapter") or ref.get("model") else ""))
    return 0
