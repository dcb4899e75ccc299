"""MLflow tracking on MlflowClient with explicit run ids: parent and nested child runs, batches, buffer, replay."""

from .reporter import MlflowReporter, sync_buffers
from .store import default_tracking_uri, ensure_experiment, flatten
from .sweep import SweepTracking, finish_sweep_tracking, start_sweep_tracking

__all__ = [
    "MlflowReporter",
    "SweepTracking",
    "default_tracking_uri",
    "ensure_experiment",
    "finish_sweep_tracking",
    "flatten",
    "start_sweep_tracking",
    "sync_buffers",
]
