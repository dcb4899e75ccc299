"""``maskdm-sweep``: the command line. Thin: parse, call the package, print."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__


def _cmd_version(args: argparse.Namespace) -> int:
    import torch

    print(f"maskdm-sweeps {__version__} (torch {torch.__version__})")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .spec import SpecError, load_model
    from .trainer import TrialConfig

    try:
        config = load_model(args.config, TrialConfig, args.set)
    except SpecError as err:
        print(f"error: {args.config} is not a valid trial config:\n{err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("results") / "train" / Path(args.config).stem
    if args.dry_run:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        print(f"stages: {', '.join(config.stages())}; outputs would go to {out}", file=sys.stderr)
        return 0
    from .console import ProgressReporter, stage_progress
    from .trainer import JsonlReporter, MultiReporter, run_trial

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=2))
    steps = {"pretrain": config.pretrain.steps, "finetune": config.finetune.steps}
    with stage_progress() as progress:
        results = run_trial(
            config, out,
            lambda stage: MultiReporter(JsonlReporter(out / stage / "metrics.jsonl"),
                                        ProgressReporter(progress, stage, steps[stage])),
        )
    for stage, r in results.items():
        fid = f"{r.fid:.3f} (best {r.fid_best:.3f})" if r.fid is not None else "-"
        print(f"{stage:9s} steps {r.steps:6d}  loss {r.loss_final:.4f}  FID {fid}  {r.wall_seconds:.0f} s")
    print(f"outputs: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskdm-sweep",
        description="Declarative ablation sweeps for Masked Diffusion Models (MaskDM).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the package and torch versions").set_defaults(func=_cmd_version)
    train = sub.add_parser(
        "train",
        help="run one trial (pre-training then fine-tuning) without Ray",
        description="Run one trial from a trial config YAML (the `base` section of a sweep spec has the same "
        "fields), with a progress bar. Re-running the same command resumes from the checkpoints.",
    )
    train.add_argument("config", type=Path, help="trial config YAML")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field, e.g. --set finetune.steps=500 (repeatable)")
    train.add_argument("--out", help="output directory (default: results/train/<config name>)")
    train.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    train.set_defaults(func=_cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
