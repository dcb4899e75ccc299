"""Ray for a sweep: start or join it, check that the cluster can hold a trial, and what each Tune trial requests."""

from __future__ import annotations

import os

from ..sweepspec.expand import SweepPlan

FORWARDED_ENV = ("MASKDM_CACHE", "MASKDM_FID_WEIGHTS")

# A Tune trial whose stage runs on Ray Train workers only drives them: it holds no CPU (Tune needs some resource in
# its request: a token of memory)
DRIVER_RESOURCES = {"cpu": 0, "gpu": 0, "memory": 2**20}


def init_ray(address: str | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``), or start a local Ray; a running session is reused."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local runs need no token (docs/design.md, environment)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our live table replaces Ray's own progress output
    # many small reports make frequent experiment snapshots: Tune's snapshot-frequency warning is noise here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env["RAY_AUTH_MODE"] = "disabled"
    ray.init(
        address=address or os.environ.get("RAY_ADDRESS"),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": env},
    )


class ClusterTooSmall(ValueError):
    """The spec asks for resources no node of the Ray cluster has: nothing could ever start."""


def check_resources(plan: SweepPlan) -> None:
    """Raise :class:`ClusterTooSmall` when no trial of ``plan`` could ever start on the Ray cluster."""
    import ray

    r, total = plan.spec.resources, ray.cluster_resources()
    if r.gpus > 0 and total.get("GPU", 0) == 0:
        raise ClusterTooSmall(
            f"resources.gpus is {r.gpus} but the Ray cluster has no GPU; run with --smoke for a "
            "CPU run, or --set resources.gpus=0"
        )
    if r.trial_gpus > total.get("GPU", 0) or r.trial_cpus > total.get("CPU", 0):
        workers = f" ({r.workers} workers of {r.cpus} CPUs and {r.gpus} GPUs)" if r.workers > 1 else ""
        raise ClusterTooSmall(
            f"a trial asks for {r.trial_cpus} CPUs and {r.trial_gpus} GPUs{workers}; the cluster "
            f"has {total.get('CPU', 0)} CPUs and {total.get('GPU', 0)} GPUs"
        )


def trial_resources(plan: SweepPlan) -> dict[str, float]:
    """What one Tune trial process requests: the trial's resources, or a driver's token when workers > 1."""
    r = plan.spec.resources
    return dict(DRIVER_RESOURCES) if r.workers > 1 else {"cpu": r.cpus, "gpu": r.gpus}


def max_concurrent_trials(plan: SweepPlan) -> int | None:
    """``resources.max_concurrent_trials``, or (0) as many trials as the cluster holds at once when workers > 1:
    a Train run starts only with all of its workers, so more drivers would only wait (Ray's advice)."""
    r = plan.spec.resources
    if r.max_concurrent_trials or r.workers == 1:
        return r.max_concurrent_trials or None
    import ray

    total = ray.cluster_resources()
    fits = [total.get("CPU", 0) // r.trial_cpus] + ([total.get("GPU", 0) // r.trial_gpus] if r.gpus else [])
    return max(1, int(min(fits)))
