"""Where runs go: the tracking URI, the experiment, and fast failure when a server is away.

The store, each experiment and each run are created once: creators of one results root take turns under
``<results root>/.mlflow.lock`` (two drivers of two sweeps creating ``mlflow.db`` at once otherwise race in its
migrations, and the loser's runs had nowhere to go).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..layout import MLFLOW_ARTIFACTS_DIR, MLFLOW_DB, mlflow_lock, relative_path

# a tracking server that is down must not stall training for minutes of HTTP retries: fail fast, buffer, replay
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

# MLflow 3's experiment kind tag: its UI reads it to tell model training from GenAI work (traces, prompts)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"  # shown as "Machine learning" in the UI; GenAI is "genai_development"
UNCHOSEN_KINDS = {"", "no_inferred_type", "genai_development_inferred", "custom_model_development_inferred"}


def default_tracking_uri(results_root: Path) -> str:
    """``sqlite:///<absolute results root>/mlflow.db`` (MLflow refuses the ./mlruns file store)."""
    return f"sqlite:///{Path(results_root).resolve() / MLFLOW_DB}"


def portable_target(uri: str, run_dir: Path) -> dict[str, str]:
    """How a run directory's files record ``uri``: the default store of a results root above ``run_dir`` as a path
    relative to it (``{"store": "../../mlflow.db"}``: a moved or copied results root uses its own store), any other
    store as its URI (``{"uri": ...}``)."""
    run_dir = Path(run_dir).resolve()
    for root in run_dir.parents:
        if uri == default_tracking_uri(root):
            return {"store": relative_path(root / MLFLOW_DB, run_dir)}
    return {"uri": uri}


def target_uri(target: dict, run_dir: Path) -> str:
    """The tracking URI a ``mlflow_target.json`` names: its ``store`` (where the run directory is now) first."""
    if target.get("store"):
        return f"sqlite:///{(Path(run_dir).resolve() / target['store']).resolve()}"
    return target["uri"]


@contextmanager
def store_lock(results_root: Path) -> Iterator[None]:
    """Held while the store, an experiment or a run of ``results_root`` is created; the OS frees it when a holder
    dies. Not re-entrant: a holder must not take it again."""
    path = mlflow_lock(results_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_READY_STORES: set[str] = set()  # database stores this process has opened (and so created, when new)


def client(uri: str, results_root: Path):
    """An ``MlflowClient``; a database store is opened the first time under the lock, because opening a new one
    creates its tables."""
    from mlflow import MlflowClient

    if uri.startswith("http") or uri in _READY_STORES:
        return MlflowClient(tracking_uri=uri)
    with store_lock(results_root):
        c = MlflowClient(tracking_uri=uri)  # MLflow caches the store per URI: later clients reuse it
    _READY_STORES.add(uri)
    return c


def ensure_experiment(uri: str, name: str, results_root: Path) -> str:
    """The id of experiment ``name``, created once (under the lock) with artifacts under
    ``<results root>/mlartifacts`` for local stores."""
    c = client(uri, results_root)
    found = c.get_experiment_by_name(name)  # without the lock: an unreachable server fails here, holding nothing
    if found is not None:
        return found.experiment_id
    with store_lock(results_root):
        return experiment_id_locked(c, uri, name, results_root)


def experiment_id_locked(c, uri: str, name: str, results_root: Path) -> str:
    """:func:`ensure_experiment` for a caller that holds the lock."""
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None if uri.startswith("http") else (Path(results_root).resolve() / MLFLOW_ARTIFACTS_DIR / name).as_uri()
    try:
        return c.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    except Exception:  # a driver of another results root, on the same server, created it meanwhile
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def mark_model_training(c, experiment_id: str) -> bool:
    """Tag experiment ``experiment_id`` as model training unless someone chose its kind (a sweep made before
    sweeps tagged theirs has none, or one the UI guessed); True when it was tagged now."""
    if c.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG, "") not in UNCHOSEN_KINDS:
        return False
    c.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return True


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
