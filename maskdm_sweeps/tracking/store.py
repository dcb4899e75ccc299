"""Where runs go: the tracking URI, the experiment, and fast failure when a server is away."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..layout import MLFLOW_ARTIFACTS_DIR, MLFLOW_DB, relative_path

# a tracking server that is down must not stall training for minutes of HTTP retries: fail fast, buffer, replay
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def default_tracking_uri(results_root: Path) -> str:
    """``sqlite:///<absolute results root>/mlflow.db`` (MLflow refuses the ./mlruns file store)."""
    return f"sqlite:///{Path(results_root).resolve() / MLFLOW_DB}"


def portable_target(uri: str, stage_dir: Path) -> dict[str, str]:
    """How a stage run's files record ``uri``: the default store of a results root above ``stage_dir`` as a path
    relative to the stage run (``{"store": "../../mlflow.db"}``: a moved results root uses its own store), any other
    store as its URI (``{"uri": ...}``)."""
    stage_dir = Path(stage_dir).resolve()
    for root in stage_dir.parents:
        if uri == default_tracking_uri(root):
            return {"store": relative_path(root / MLFLOW_DB, stage_dir)}
    return {"uri": uri}


def target_uri(target: dict, stage_dir: Path) -> str:
    """The tracking URI a ``mlflow_target.json`` names, its ``store`` (where the stage run is now) first."""
    if target.get("store"):
        return f"sqlite:///{(Path(stage_dir).resolve() / target['store']).resolve()}"
    return target["uri"]


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str, results_root: Path) -> str:
    """The id of experiment ``name``, created with artifacts under ``<results root>/mlartifacts`` for local stores."""
    c = client(uri)
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None if uri.startswith("http") else (Path(results_root).resolve() / MLFLOW_ARTIFACTS_DIR / name).as_uri()
    return c.create_experiment(name, artifact_location=location)


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=cwd, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"finetune.lr": "0.0002", ...}``: MLflow params are the flattened resolved config."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = "null" if value is None else str(value)
    return out
