"""``maskdm-sweep``'s argument parser: each subcommand's arguments and ``--help`` texts (docs/cli.md)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path

from . import __version__

Handler = Callable[[argparse.Namespace], int]
Subparsers = argparse._SubParsersAction  # what ``add_subparsers`` returns


def _add_spec_args(p: argparse.ArgumentParser, smoke: bool = True) -> None:
    p.add_argument("spec", type=Path, help="sweep spec YAML (see experiments/)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, e.g. --set base.finetune.steps=500 or --set sweep.seeds=[0,1] "
        "(repeatable; values are parsed as YAML)",
    )
    if smoke:
        p.add_argument(
            "--smoke",
            action="store_true",
            help="shrink the spec to a CPU run on the embedded digits with tiny budgets, keeping its axes",
        )


def _add_progress_args(p: argparse.ArgumentParser) -> None:
    """What ``run`` and ``resume`` share: where Ray is, and how progress is shown."""
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument(
        "--status-every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="when standard output is not a terminal (a log file, a pipe), print a status line with the "
        "stage runs running, done and failed, images/s and an ETA every this many seconds, beside a "
        "line per stage run start, resume and end (default: %(default)g)",
    )


def _version_parser(sub: Subparsers) -> argparse.ArgumentParser:
    return sub.add_parser("version", help="print the package and torch versions")


def _validate_parser(sub: Subparsers) -> argparse.ArgumentParser:
    validate = sub.add_parser(
        "validate",
        help="check a sweep spec (schema, data paths, FID weights, masks)",
        description="Exit 0 when the spec and every trial it expands to are valid, 2 "
        "otherwise, naming each bad field and its line.",
    )
    _add_spec_args(validate)
    return validate


def _plan_parser(sub: Subparsers) -> argparse.ArgumentParser:
    plan = sub.add_parser("plan", help="show the trials, shared and reused pre-trainings, and estimated GPU-hours")
    _add_spec_args(plan)
    plan.add_argument(
        "--json", action="store_true", help="print the plan as JSON (for scripts): the same content as the tables"
    )
    return plan


def _run_parser(sub: Subparsers) -> argparse.ArgumentParser:
    run = sub.add_parser(
        "run",
        help="run a sweep on Ray Tune (this machine, or a cluster with --address)",
        description="Expand the spec into trials and run them on Ray Tune: shared pre-trainings first, then the "
        "trials. Re-running the same spec continues its sweep; a changed spec is refused (exit 2) unless it gets "
        "a new name or --replace. Exit codes: 0 all trials finished, 1 some failed (listed), 2 bad input (nothing "
        "started).",
    )
    _add_spec_args(run)
    _add_progress_args(run)
    run.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    run.add_argument(
        "--replace",
        action="store_true",
        help="when the sweep's directory holds another spec (run refuses it otherwise, listing the "
        "changed fields), move that directory aside to <name>.replaced-<UTC time>/ and start afresh; "
        "nothing is deleted, and shared pre-trainings are reused",
    )
    return run


def _resume_parser(sub: Subparsers) -> argparse.ArgumentParser:
    resume = sub.add_parser(
        "resume",
        help="continue an interrupted or partly failed sweep",
        description="Finished trials are kept, unfinished ones continue from their "
        "checkpoints, failed ones are retried. The directory may have been moved or copied (with "
        "the _pretrain/ beside it): it resumes where it is. A spec.resolved.yaml edited by hand "
        "is refused (exit 2).",
    )
    resume.add_argument("dir", type=Path, help="the sweep's results directory (results/<sweep name>)")
    _add_progress_args(resume)
    return resume


def _report_parser(sub: Subparsers) -> argparse.ArgumentParser:
    report = sub.add_parser(
        "report",
        help="(re)write a sweep's parquet tables, report.md and plots, print the table",
        description="Collect the files a sweep wrote into trials.parquet and curves.parquet, "
        "write report.md and plots/*.png, and print FID by arm. Works on a partial sweep too.",
    )
    report.add_argument("dir", type=Path, help="the sweep's results directory (results/<sweep name>)")
    report.add_argument(
        "--json",
        action="store_true",
        help="print FID by arm, the speed-ups and the files as JSON (for scripts) instead of the table",
    )
    return report


def _sync_parser(sub: Subparsers) -> argparse.ArgumentParser:
    sync = sub.add_parser("sync", help="replay MLflow records buffered while the tracking server was unreachable")
    sync.add_argument("dir", type=Path, help="a results directory (every buffer below it is replayed)")
    return sync


def _ui_parser(sub: Subparsers) -> argparse.ArgumentParser:
    ui = sub.add_parser("ui", help="start the MLflow UI on a results store, bound to 127.0.0.1")
    ui.add_argument(
        "dir",
        type=Path,
        nargs="?",
        default=Path("results"),
        help="results root or sweep directory (default: %(default)s)",
    )
    ui.add_argument("--port", type=int, default=5000, help="port (default: %(default)s)")
    ui.add_argument(
        "--open",
        action="store_true",
        help="open the sweep's runs in a browser once the UI is up ($BROWSER, or what Python's webbrowser finds)",
    )
    return ui


def _train_parser(sub: Subparsers) -> argparse.ArgumentParser:
    train = sub.add_parser(
        "train",
        help="run one trial (pre-training then fine-tuning) without Ray",
        description="Run one trial from a trial config YAML (the `base` section of a sweep spec has the same "
        "fields), with a progress bar. Re-running the same command resumes from the checkpoints.",
    )
    train.add_argument("config", type=Path, help="trial config YAML")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. --set finetune.steps=500 (repeatable)",
    )
    train.add_argument("--out", help="output directory (default: results/train/<config name>)")
    train.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    return train


# The subcommands in the order ``--help`` lists them.
SUBCOMMANDS: dict[str, Callable[[Subparsers], argparse.ArgumentParser]] = {
    "version": _version_parser,
    "validate": _validate_parser,
    "plan": _plan_parser,
    "run": _run_parser,
    "resume": _resume_parser,
    "report": _report_parser,
    "sync": _sync_parser,
    "ui": _ui_parser,
    "train": _train_parser,
}


def build_parser(handlers: Mapping[str, Handler]) -> argparse.ArgumentParser:
    """The parser, each subcommand's ``func`` default set to ``handlers[its name]``."""
    parser = argparse.ArgumentParser(
        prog="maskdm-sweep",
        description="Declarative ablation sweeps for Masked Diffusion Models (MaskDM).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, add_parser in SUBCOMMANDS.items():
        add_parser(sub).set_defaults(func=handlers[name])
    return parser
