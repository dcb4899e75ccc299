"""``maskdm-sweep``: the command line. Thin: parse, call the package, print."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__, cli_parser


def _cmd_version(args: argparse.Namespace) -> int:
    import torch

    print(f"maskdm-sweeps {__version__} (torch {torch.__version__})")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .sweepspec import SpecError, load_model
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
    from .files import write_json
    from .layout import STAGE_CONFIG, STAGE_METRICS
    from .trainer import JsonlReporter, MultiReporter, run_trial

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / STAGE_CONFIG, config.model_dump(mode="json"))
    steps = {"pretrain": config.pretrain.steps, "finetune": config.finetune.steps}
    with stage_progress() as progress:
        results = run_trial(
            config,
            out,
            lambda stage: MultiReporter(
                JsonlReporter(out / stage / STAGE_METRICS), ProgressReporter(progress, stage, steps[stage])
            ),
        )
    for stage, r in results.items():
        fid = f"{r.fid:.3f} (best {r.fid_best:.3f})" if r.fid is not None else "-"
        print(f"{stage:9s} steps {r.steps:6d}  loss {r.loss_final:.4f}  FID {fid}  {r.wall_seconds:.0f} s")
    print(f"outputs: {out}")
    return 0


def _load_plan(args: argparse.Namespace, check_paths: bool = True):
    """The plan of a spec, or None after printing why it is bad input (the caller exits with code 2)."""
    from .sweepspec import SpecError, load_spec

    try:
        return load_spec(args.spec, args.set, smoke=getattr(args, "smoke", False), check_paths=check_paths)
    except SpecError as err:
        print(f"error: {args.spec} is not a valid sweep spec:\n{err}", file=sys.stderr)
        return None


def _cmd_validate(args: argparse.Namespace) -> int:
    plan = _load_plan(args)
    if plan is None:
        return 2
    print(
        f"{args.spec}: valid; {len(plan.trials)} trials, {len(plan.pretrains)} shared pre-trainings "
        f"(spec hash {plan.spec_hash})"
    )
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    plan = _load_plan(args, check_paths=False)  # plan away from the data; `validate` and `run` check paths
    if plan is None:
        return 2
    if args.json:
        import json

        from .sweep.plan_view import plan_json

        print(json.dumps(plan_json(plan), indent=2))
        return 0
    from .sweep.plan_view import print_plan

    print_plan(plan)
    return 0


def _execute(plan, address: str | None, resume: bool, status_every: float = 60.0) -> int:
    from .layout import SweepDirError
    from .sweep import ClusterTooSmall, SweepStorageError, run_sweep
    from .sweep.lock import SweepLocked
    from .sweep.rounds import BudgetTooSmall

    try:
        outcome = run_sweep(plan, address=address, resume=resume, status_every=status_every)
    except (ClusterTooSmall, SweepLocked, SweepDirError, BudgetTooSmall) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SweepStorageError as err:
        done = [t.trial_id for t in plan.trials if plan.trial_finished(t.trial_id)]
        print(f"error: {err}", file=sys.stderr)
        _print_driver_log(plan)
        print(
            f"sweep {plan.spec.name}: {len(done)}/{len(plan.trials)} trials finished before that; free the space "
            f"and continue with: maskdm-sweep resume {plan.sweep_dir}",
            file=sys.stderr,
        )
        return 1
    print(
        f"sweep {plan.spec.name}: {len(outcome.finished)}/{len(plan.trials)} trials finished "
        f"({len(outcome.reused)} were already finished); results in {outcome.sweep_dir}"
    )
    if outcome.artifacts:
        from .console import print_results_summary

        print_results_summary(outcome.sweep_dir, outcome.artifacts, _tracking_uri(plan.spec))
    if outcome.notices:
        print(f"{len(outcome.notices)} notices from the trials (also in report.md):", file=sys.stderr)
        for line in outcome.notices:
            print(f"  {line}", file=sys.stderr)
    for ident, reason in outcome.failed.items():
        print(f"FAILED {ident}: {reason}", file=sys.stderr)
    if outcome.killed:
        for e in outcome.interrupted:
            print(f"stopped: {e['stage']} {e['key']} at step {e['step']} (its checkpoint)", file=sys.stderr)
        print(f"sweep {plan.spec.name} stopped by Ctrl-C", file=sys.stderr)
    if outcome.failed:
        _print_driver_log(plan)
    if outcome.failed or outcome.killed:
        print(f"continue with: maskdm-sweep resume {outcome.sweep_dir}", file=sys.stderr)
    return outcome.exit_code


def _print_driver_log(plan) -> None:
    """Where Ray's and Tune's messages went (the tracebacks of failed trials): they are kept off the terminal."""
    log = plan.layout.driver_log
    if log.exists():
        empty = " (empty: nothing could be written to it)" if log.stat().st_size == 0 else ""
        print(f"Ray's messages and tracebacks: {log}{empty}", file=sys.stderr)


def _cmd_run(args: argparse.Namespace) -> int:
    plan = _load_plan(args)
    if plan is None:
        return 2
    if args.dry_run:
        from .sweep.plan_view import print_plan

        print_plan(plan)
        return 0
    if not _bind_sweep_dir(plan, args.replace):
        return 2
    return _execute(plan, args.address, resume=False, status_every=args.status_every)


def _bind_sweep_dir(plan, replace: bool) -> bool:
    """Whether ``plan`` may run in its sweep directory: it holds nothing, or this same spec, or (``replace``) the
    directory was moved aside. Prints why not (the caller exits with code 2); reads only, unless it moves."""
    from .layout import SweepDirError
    from .sweep.lock import DriverLock, SweepLocked
    from .sweepspec.binding import check_binding, move_aside

    try:
        check_binding(plan)
        return True
    except SweepDirError as err:
        if not replace:
            print(f"error: {err}", file=sys.stderr)
            return False
    try:
        with DriverLock(plan.layout):  # never move a directory that another driver is running
            moved = move_aside(plan.layout)
    except SweepLocked as err:
        print(f"error: {err}", file=sys.stderr)
        return False
    print(f"--replace: moved {plan.sweep_dir} aside to {moved}; sweep {plan.spec.name} starts afresh")
    return True


def _cmd_resume(args: argparse.Namespace) -> int:
    plan = _load_sweep_dir(Path(args.dir))
    if plan is None:
        return 2
    return _execute(plan, args.address, resume=True, status_every=args.status_every)


def _load_sweep_dir(sweep_dir: Path, check_paths: bool = True):
    """The plan of the sweep in ``sweep_dir``, where it is now, or None after printing why not (exit code 2)."""
    from .layout import RESOLVED_SPEC, SweepDirError
    from .sweepspec import SpecError
    from .sweepspec.binding import load_sweep_dir

    try:
        return load_sweep_dir(sweep_dir, check_paths=check_paths)
    except SweepDirError as err:
        print(f"error: {err}", file=sys.stderr)
    except SpecError as err:
        print(f"error: {sweep_dir / RESOLVED_SPEC}:\n{err}", file=sys.stderr)
    return None


def _tracking_uri(spec) -> str:
    from .tracking import default_tracking_uri

    return spec.tracking.mlflow_uri or default_tracking_uri(spec.output_dir)


def _cmd_report(args: argparse.Namespace) -> int:
    from .console import print_results_summary
    from .layout import RESOLVED_SPEC, SweepDirError
    from .results import write_all
    from .sweepspec import SpecError
    from .sweepspec.binding import load_sweep_dir

    sweep_dir = Path(args.dir)
    if not (sweep_dir / RESOLVED_SPEC).exists():
        print(f"error: {sweep_dir} holds no {RESOLVED_SPEC}: not a sweep directory", file=sys.stderr)
        return 2
    try:
        paths = write_all(sweep_dir)
    except SweepDirError as err:  # its plan and its spec disagree: no report could be trusted
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        import json

        from .console import results_json

        print(json.dumps(results_json(sweep_dir, paths), indent=2))
        return 0
    try:  # the store of the sweep where it is now (a moved results root has its store with it)
        uri = _tracking_uri(load_sweep_dir(sweep_dir, check_paths=False).spec)
    except (SweepDirError, SpecError):
        uri = None
    print_results_summary(sweep_dir, paths, uri)
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    from .tracking import sync_buffers

    left = sync_buffers(Path(args.dir))
    if not left:
        print(f"nothing buffered under {args.dir}")
        return 0
    for stage_dir, n in left.items():
        print(f"{'sent' if n == 0 else f'{n} records still buffered (server unreachable)'}: {stage_dir}")
    return 1 if any(left.values()) else 0


def _experiment_of(sweep_dir: Path) -> str | None:
    """The MLflow experiment of the sweep in ``sweep_dir``; None when its spec cannot be read (the UI still serves
    the store, on the list of experiments)."""
    from .layout import SweepDirError
    from .sweepspec import SpecError
    from .sweepspec.binding import load_sweep_dir

    try:
        spec = load_sweep_dir(sweep_dir, check_paths=False).spec
    except (SweepDirError, SpecError):
        return None
    return spec.tracking.experiment or spec.name


def _cmd_ui(args: argparse.Namespace) -> int:
    from .layout import MLFLOW_DB, RESOLVED_SPEC
    from .tracking import default_tracking_uri
    from .tracking.ui import mark_sweeps_as_training, runs_page, serve, start_server, ui_address

    root, sweep = Path(args.dir), None
    if (root / RESOLVED_SPEC).exists():  # a sweep directory: its store is in the results root above it
        root, sweep = root.parent, _experiment_of(root)
    uri = default_tracking_uri(root)
    if not (root / MLFLOW_DB).exists():
        print(f"error: no MLflow store at {root / MLFLOW_DB}", file=sys.stderr)
        return 2
    experiments = mark_sweeps_as_training(uri, root)
    if sweep is None and len(experiments) == 1:  # a results root of one sweep: its runs
        sweep = next(iter(experiments))
    url = runs_page(args.port, experiments.get(sweep) if sweep else None)
    what = f"the runs of sweep {sweep}" if sweep in experiments else "the sweeps' experiments"
    print(f"MLflow UI for {uri} on {ui_address(args.port)}\n  {what}: {url}  (Ctrl-C to stop)", flush=True)
    return serve(start_server(uri, args.port), args.port, url if args.open else None)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (``cli_parser``), each subcommand bound to its function here."""
    return cli_parser.build_parser(
        {
            "version": _cmd_version,
            "validate": _cmd_validate,
            "plan": _cmd_plan,
            "run": _cmd_run,
            "resume": _cmd_resume,
            "report": _cmd_report,
            "sync": _cmd_sync,
            "ui": _cmd_ui,
            "train": _cmd_train,
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
