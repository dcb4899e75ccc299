"""The shared MaskDM trainer: one stage of one trial, from a resolved config. No ray, mlflow or yaml here."""

from .checkpoint import CheckpointError, list_checkpoints, load_latest_checkpoint, save_checkpoint
from .config import (
    BlockMaskConfig,
    CropMaskConfig,
    DiffusionConfig,
    EMAConfig,
    EvalConfig,
    FinetuneConfig,
    ModelConfig,
    PatchMaskConfig,
    PretrainConfig,
    RuntimeConfig,
    TrialConfig,
)
from .ema import EMA, ema_decay
from .loop import StageResult, TrainingDiverged, fit
from .parallel import BatchDoesNotDivide, DataParallel, ReplicasDiverged
from .reporter import JsonlReporter, MultiReporter, NullReporter, Reporter, read_jsonl_metrics
from .trial import run_trial

__all__ = [
    "CheckpointError", "list_checkpoints", "load_latest_checkpoint", "save_checkpoint", "BlockMaskConfig",
    "CropMaskConfig", "DiffusionConfig", "EMAConfig", "EvalConfig", "FinetuneConfig", "ModelConfig",
    "PatchMaskConfig", "PretrainConfig", "RuntimeConfig", "TrialConfig", "EMA", "ema_decay",
    "StageResult", "TrainingDiverged", "fit", "JsonlReporter", "MultiReporter", "NullReporter", "Reporter",
    "read_jsonl_metrics", "run_trial", "BatchDoesNotDivide", "DataParallel", "ReplicasDiverged",
]
