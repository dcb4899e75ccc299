"""A whole trial without any orchestrator: pre-training (if any), then fine-tuning from its final checkpoint."""

from __future__ import annotations

from pathlib import Path

from .config import TrialConfig
from .loop import StageResult, fit
from .reporter import NullReporter, Reporter


def run_trial(config: TrialConfig, workdir: Path, reporter_for=None) -> dict[str, StageResult]:
    """Run every stage of ``config`` under ``workdir/<stage>``; ``reporter_for(stage) -> Reporter`` (default: none).

    Re-running resumes each stage from its checkpoints; a finished stage is not trained again.
    """
    reporter_for = reporter_for or (lambda stage: NullReporter())
    results: dict[str, StageResult] = {}
    init = None
    for stage in config.stages():
        reporter: Reporter = reporter_for(stage)
        results[stage] = fit(config, stage, Path(workdir) / stage, reporter, init_checkpoint=init)
        init = Path(results[stage].checkpoint)
    return results
