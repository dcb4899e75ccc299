"""The ``packing`` section of ``bench.py``: 1, 2 and 4 (CPU: 1 and 2) concurrent small trials through Ray Tune
fractional GPUs (CPU: fractional CPUs), or plain concurrent processes where Ray is not installed; aggregate images/s
= sum of the trials' last-window rates, against one trial alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from bench_common import HERE, ROOT, StepTimer, device_name, fmt, log, preset_data, print_table, run_fit, trial_config
from maskdm_sweeps.trainer import TrialConfig


def _packing_trial(config: dict) -> dict:
    """Ray Tune function trainable (and process-pool task): one ``fit``; the trials wait for each other at the end
    of their warm-up window.

    The barrier is the timer's ``on_first_window``: it runs at the trainer's first report, before the trainer
    restarts its window clock, so every trial's timed window starts at the same moment (a file per ready trial in a
    shared folder).
    """
    barrier, n, index = Path(config["barrier"]), config["n"], config["index"]
    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    waited = []

    def wait_for_the_others():
        t0 = time.time()
        (barrier / f"ready-{index}").touch()
        while len(list(barrier.glob("ready-*"))) < n and time.time() - t0 < 300:
            time.sleep(0.005)
        waited.append(time.time() - t0)

    cfg = TrialConfig.model_validate(config["trial"])
    timer = StepTimer(cfg.runtime.device, on_first_window=wait_for_the_others)
    rate = run_fit(cfg, timer)["images_per_second"]
    return {
        "images_per_second": rate,
        "window_start": timer.previous["wall"],
        "window_end": timer.last["wall"],
        "barrier_wait": waited[0] if waited else 0.0,
        "threads": torch.get_num_threads(),
    }


@contextmanager
def local_ray(cpus: int, gpus: int):
    """A Ray of this benchmark's own, shut down on exit: the one Ray start-up of ``benchmarks/``.

    Not the package's ``maskdm_sweeps.sweep.ray_setup.init_ray``: that one connects to ``RAY_ADDRESS`` or a Ray already
    running on the machine and lets Ray count the resources, where a measurement needs a fresh local instance
    (``address="local"``) that sees exactly ``cpus`` CPUs and one card, a short temporary folder of its own, and
    ``benchmarks/`` on the workers' ``PYTHONPATH`` (the trainable lives in this module). The environment defaults
    are the package's.
    """
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    env = {
        "RAY_AUTH_MODE": "disabled",
        "MASKDM_CACHE": os.environ["MASKDM_CACHE"],
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    ray_tmp = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))  # short: socket paths are limited to 107 bytes
    ray.init(
        address="local",
        num_cpus=cpus,
        num_gpus=gpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _temp_dir=str(ray_tmp),
        runtime_env={"env_vars": env},
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _ray_rounds(counts, make_configs, resources, cuda: bool, cpus: int, workdir: Path):
    """One Tune run per count: ``tune.with_resources`` fractional GPUs (CPU: fractional CPUs)."""
    from ray import tune

    with local_ray(cpus, 1 if cuda else 0):
        for n in counts:
            configs = make_configs(n)
            log(f"packing (ray): {n} concurrent trial(s), resources {resources(n)} each ...")
            tuner = tune.Tuner(
                tune.with_resources(_packing_trial, resources(n)),
                param_space={**configs[0], "index": tune.grid_search(list(range(n)))},
                tune_config=tune.TuneConfig(max_concurrent_trials=n),
                run_config=tune.RunConfig(name=f"pack-{n}", storage_path=str(workdir / "tune"), verbose=0),
            )
            timer = StepTimer()
            with timer.window():
                grid = tuner.fit()
            results = [grid[i] for i in range(len(grid))]  # a ResultGrid indexes, but is not typed iterable
            errors = [str(r.error)[-300:] for r in results if r.error is not None]
            if errors:  # tuner.fit() returns failed trials in its results instead of raising
                raise RuntimeError(f"{len(errors)} packing trial(s) failed: {errors[0]}")
            yield n, resources(n), [r.metrics for r in results], timer.seconds


def _process_rounds(counts, make_configs, resources, cuda: bool, cpus: int, workdir: Path):
    """The same trials as plain concurrent processes (spawned): what Ray's fractional GPU amounts to on one card."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    for n in counts:
        log(f"packing (processes): {n} concurrent trial(s) ...")
        timer = StepTimer()
        with timer.window(), ctx.Pool(n) as pool:
            metrics = pool.map(_packing_trial, make_configs(n))
        yield n, resources(n), metrics, timer.seconds


def section_packing(args, device: torch.device, workdir: Path, result: dict) -> None:
    backend = args.packing_backend
    if backend == "auto":
        try:
            import ray  # noqa: F401

            backend = "ray"
        except ImportError:
            backend = "processes"
    cuda = device.type == "cuda"
    cpus = os.cpu_count() or 1
    counts = [n for n in args.packing_counts if cuda or n <= cpus]
    data = preset_data(args.packing_preset, workdir)
    cfg = trial_config(args.packing_preset, data, args.packing_batch, 0.0, args.packing_steps, device.type)

    def make_configs(n: int) -> list[dict]:
        barrier = workdir / f"barrier-{backend}-{n}"
        barrier.mkdir()
        threads = None if cuda else 1 if args.quick else max(1, cpus // n)
        return [
            {"index": i, "n": n, "barrier": str(barrier), "threads": threads, "trial": cfg.model_dump(mode="json")}
            for i in range(n)
        ]

    def resources(n: int) -> dict:
        return {"cpu": 1, "gpu": 1 / n} if cuda else {"cpu": cpus / n}

    if cuda:
        torch.cuda.empty_cache()
    rounds = (_ray_rounds if backend == "ray" else _process_rounds)(
        counts, make_configs, resources, cuda, cpus, workdir
    )
    rows = []
    for n, res, metrics, wall in rounds:
        starts, ends = [m["window_start"] for m in metrics], [m["window_end"] for m in metrics]
        mean_window = sum(e - s for s, e in zip(starts, ends, strict=True)) / n
        overlap = max(0.0, min(ends) - max(starts)) / mean_window if mean_window > 0 else 0.0
        rows.append(
            {
                "trials": n,
                "resources": res if backend == "ray" else None,
                "per_trial_images_per_second": [m["images_per_second"] for m in metrics],
                "aggregate_images_per_second": sum(m["images_per_second"] for m in metrics),
                "timed_window_overlap": overlap,
                "wall_seconds": wall,
                "threads_per_trial": metrics[0].get("threads"),
            }
        )
    base = rows[0]["aggregate_images_per_second"] if rows and rows[0]["trials"] == 1 else None
    for row in rows:
        row["vs_one_alone"] = row["aggregate_images_per_second"] / base if base else None
    result["sections"]["packing"] = {
        "preset": args.packing_preset,
        "batch": args.packing_batch,
        "timed_steps": args.packing_steps,
        "backend": backend,
        "resource": ("gpu" if cuda else "cpu") + " fraction" if backend == "ray" else None,
        "rows": rows,
    }
    how = f"Ray Tune fractional {'GPUs' if cuda else 'CPUs'}" if backend == "ray" else "concurrent processes (no Ray)"
    print_table(
        f"packing: {args.packing_preset} batch {args.packing_batch}, {args.packing_steps} timed steps per trial, "
        f"{how}, {device_name(device)}",
        ["trials", "aggregate img/s", "vs one alone", "per trial img/s", "window overlap", "wall s"],
        [
            [
                r["trials"],
                fmt(r["aggregate_images_per_second"]),
                f"{r['vs_one_alone']:.2f}x" if r["vs_one_alone"] else "-",
                " / ".join(fmt(v, 0) for v in r["per_trial_images_per_second"]),
                f"{r['timed_window_overlap']:.0%}",
                fmt(r["wall_seconds"]),
            ]
            for r in rows
        ],
        [
            "aggregate = sum of the trials' last-window rates; 'window overlap' = the share of a timed window "
            "during which all trials were timing at once (low overlap overstates the aggregate)"
        ],
    )
