"""The shared MaskDM trainer: one stage of one trial, from a resolved config. No ray, mlflow or yaml here."""

from .._lazy import lazy_exports

# public name -> the submodule that defines it, imported on first use (see maskdm_sweeps._lazy)
_EXPORTS = {
    "checkpoint": ["CheckpointError", "list_checkpoints", "load_latest_checkpoint", "save_checkpoint"],
    "config": [
        "DiffusionConfig",
        "EMAConfig",
        "EvalConfig",
        "FinetuneConfig",
        "ModelConfig",
        "PretrainConfig",
        "RuntimeConfig",
        "TrialConfig",
    ],
    "ema": ["EMA", "ema_decay"],
    "loop": ["StageResult", "TrainingDiverged", "fit"],
    "parallel": ["BatchDoesNotDivide", "DataParallel", "ReplicasDiverged"],
    "reporter": ["JsonlReporter", "MultiReporter", "NullReporter", "Reporter", "read_jsonl_metrics"],
    "trial": ["run_trial"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
