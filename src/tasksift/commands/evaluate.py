"""``tasksift evaluate``: run an evaluation recipe (or a built-in preset) and write
results.jsonl, summary.json and report.html."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate", help="compare selection methods: select, fine-tune, score, report",
        description="For each method x budget x seed (plus random at the same sizes and the base model): "
                    "select, LoRA fine-tune the base model, score on the task's held-out test part. Writes "
                    "results.jsonl (one row per arm, resumable), summary.json and report.html into --out.")
    p.add_argument("recipe", nargs="?", help="evaluation recipe (YAML); see bench/recipes/")
    p.add_argument("--preset", choices=["smoke", "cpu", "gpu"],
                   help="built-in recipe: smoke (tiny random model, seconds), cpu (~1 h on 2 cores), gpu")
    p.add_argument("--out", "-O", help="output folder (default: the recipe's 'out', else eval-out/<name>)")
    p.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="skip arms already in OUT/results.jsonl (default)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start over, discarding OUT/results.jsonl")
    p.add_argument("--data-root", default="../shared/data", help="data folder for the cpu/gpu presets")
    p.add_argument("--cache-dir", default=None, help="feature cache (default OUT/cache)")
    p.add_argument("--no-progress", action="store_true", help="hide progress messages")
    p.add_argument("--plan", action="store_true",
                   help="validate the recipe and list its arms (marking finished ones in --out), run nothing")
    p.add_argument("--seeds", type=int, nargs="+", metavar="S",
                   help="run only these seeds instead of the recipe's (one out dir per seed; combine with --summarize)")
    p.add_argument("--estimate", action="store_true",
                   help="time a few LoRA steps and test items, print the whole run's estimated duration, run nothing")
    p.add_argument("--no-estimate", action="store_true", help="skip the up-front estimate before a run")
    p.add_argument("--summarize", nargs="+", metavar="DIR",
                   help="combine out dirs of one recipe differing only in seeds into --out "
                        "(results.jsonl, summary.json, report.html, published.json); no recipe needed")
    p.add_argument("--publish", metavar="FILE",
                   help="with --summarize: also write the publishable summary here (e.g. bench/results/<task>.json)")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluate import load_recipe, preset_recipe, run_evaluation

    if args.summarize:
        return _summarize(args)
    if args.publish:
        raise ConfigError("--publish goes with --summarize DIR [DIR ...]")
    if bool(args.recipe) == bool(args.preset):
        raise ConfigError("give a recipe file or --preset smoke|cpu|gpu (one of them)")
    if args.preset:
        out = Path(args.out or f"eval-out/{args.preset}")
        recipe = preset_recipe(args.preset, out, data_root=args.data_root)
    else:
        recipe = load_recipe(args.recipe)
        out = Path(args.out or recipe.out or f"eval-out/{recipe.name}")
    if args.seeds:
        from ..evaluate import recipe_from_dict

        recipe = recipe_from_dict({**recipe.to_dict(), "seeds": list(args.seeds)}, source="--seeds")
    if args.plan:
        from ..evaluate.runner import RESULTS, plan_arms, read_results, validate_methods

        validate_methods(recipe)
        done = {r["arm"] for r in read_results(out / RESULTS)}
        arms = plan_arms(recipe)
        print(f"tasksift evaluate {recipe.name}: {len(arms)} arms, {sum(a['id'] in done for a in arms)} finished "
              f"in {out}; scorers {', '.join(recipe.scorers)} (primary {recipe.primary})")
        if recipe.sweep is not None:
            from ..evaluate.sweep import SWEEP_FILE, read_sweep, sweep_points

            have = {r.get("point") for r in read_sweep(out / SWEEP_FILE)}
            sw = recipe.sweep
            print(f"  sweep first (random subsets at {sw['budget']}, {sw['scorer']} on {sw['n_val']} validation items):")
            for pt in sweep_points(sw):
                print(f"  {'done' if pt['id'] in have else 'todo'}  sweep|{pt['id']}")
        for a in arms:
            print(f"  {'done' if a['id'] in done else 'todo'}  {a['id']}")
        return 0
    if args.estimate:
        from ..evaluate.estimate import estimate_run, format_estimate
        from ..evaluate.runner import Evaluation

        ev = Evaluation(recipe, out, resume=True, progress=not args.no_progress, cache_dir=args.cache_dir)
        ev.prepare()
        print(f"tasksift evaluate {recipe.name}: {format_estimate(estimate_run(ev))}")
        return 0
    summary = run_evaluation(recipe, out, resume=args.resume, progress=False if args.no_progress else None,
                             cache_dir=args.cache_dir, estimate=not args.no_estimate)
    primary = summary["primary_scorer"]
    print(f"tasksift evaluate {summary['name']}: {summary['n_arms']} arms "
          f"({len(summary['arms_skipped'])} resumed), primary score {primary}")
    print(f"  {'method':<24} {'budget':<12} {'n':>7} {'SDF':>8} {primary + ' mean':>12} {'PIR':>7} {'eff.':>7} {'rank':>4}")
    base = summary.get("base_scores", {}).get(primary, {}).get("all")
    if base is not None:
        print(f"  {'base model':<24} {'-':<12} {0:>7} {0:>8.4f} {base:>12.4f} {1:>7.3f} {'-':>7} {'-':>4}")
    for e in summary["table"]:
        f = lambda v, nd=3: "-" if v is None else f"{v:.{nd}f}"  # noqa: E731
        print(f"  {e['method'][:24]:<24} {e['budget']:<12} {e['n_selected']:>7.0f} {e['sdf']:>8.4f} "
              f"{f(e.get(primary + '_mean'), 4):>12} {f(e.get('pir')):>7} {f(e.get('efficiency')):>7} "
              f"{e.get('feasibility_rank', '-'):>4}")
    print(f"  wrote {out / 'results.jsonl'}, {out / 'summary.json'}, {summary['report']}", file=sys.stdout)
    _print_paired(summary)
    return 0


def _print_paired(summary: dict) -> None:
    """The paired differences to random (95% bootstrap interval) and the base model at chance."""
    rows = summary.get("paired") or []
    if rows:
        print("  paired difference to random at the same budget (method - random, seeds pooled per item):")
        for c in rows:
            print(f"    {c['method'][:22]:<22} {c['budget']:<12} {c['scorer']:<11} {c['diff']:+.4f} "
                  f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]  MDE {c['mde']:.4f}  n={c['n_items']}  {c['verdict']}")
    for k, v in (summary.get("base_chance") or {}).items():
        print(f"  base model multiple choice on {k}: {v['accuracy']:.3f} vs chance {v['chance']:.3f} "
              f"(distance {v['distance']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}])"
              f"{' -- AT CHANCE: lean on the loss scorer' if v['at_chance'] else ''}")


def _summarize(args: argparse.Namespace) -> int:
    from ..evaluate.combine import summarize_dirs

    if not args.out:
        raise ConfigError("--summarize needs --out DIR for the combined summary")
    summary = summarize_dirs(args.summarize, args.out, publish=args.publish)
    print(f"tasksift evaluate --summarize: {len(args.summarize)} dirs, {summary['n_arms']} arms, seeds "
          f"{summary['recipe'].get('seeds')} -> {args.out}" + (f" and {args.publish}" if args.publish else ""))
    missing = summary.get("missing_fields") or {}
    if missing:
        print("  fields missing in rows from older runs: " + ", ".join(f"{k} ({len(v)} arms)" for k, v in missing.items()))
    _print_paired(summary)
    return 0
