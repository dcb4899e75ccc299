"""What a trial process notices reaches the user: a checkpoint that a retry finds unreadable is named on the
driver's output (as it happens and in the closing summary), in ``events.jsonl`` and in ``report.md``."""

from __future__ import annotations

import yaml

from maskdm_sweeps.cli import main
from maskdm_sweeps.layout import EVENTS_FILE, SweepDir, read_notices
from maskdm_sweeps.sweep import run_sweep
from maskdm_sweeps.sweepspec import load_spec
from maskdm_sweeps.testing import corrupt_once, tiny_sweep_spec


def test_a_checkpoint_fallback_in_a_worker_is_printed_logged_and_reported(tmp_path, ray_session):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            tiny_sweep_spec(
                "notices",
                tmp_path / "results",
                pretrain={"steps": 0},
                finetune={"steps": 20},
                runtime={"log_every_steps": 5, "checkpoint_every_steps": 5},
            )
        )
    )
    plan = load_spec(spec)
    # the fine-tuning dies at step 15 with its step-10 checkpoint cut short: the retry resumes from step 5
    outcome = run_sweep(plan, reporters=corrupt_once("finetune", 15), track=False)
    assert outcome.exit_code == 0, outcome.failed
    layout = SweepDir(tmp_path / "results", "notices")
    notices = read_notices(layout.path)
    assert len(notices) == 1, notices
    assert "step_000000010.pt" in notices[0]["message"] and notices[0]["unit"] == plan.trials[0].trial_id
    starts = [e for e in layout.events.read_text().splitlines() if '"stage_start"' in e]
    assert '"from_step": 5' in starts[-1]  # it did fall back, to the checkpoint before
    assert outcome.notices == [f"notice  {plan.short_labels()[plan.trials[0].trial_id]}: {notices[0]['message']}"]
    report = layout.report.read_text()
    assert "## Notices" in report and "step_000000010.pt" in report.split("## Notices")[1]

    # `report` rewrites the report from the files: the section stays
    assert main(["report", str(layout.path)]) == 0
    assert "step_000000010.pt" in layout.report.read_text().split("## Notices")[1]


def test_the_progress_log_prints_notices_as_they_arrive(tmp_path):
    import io

    from maskdm_sweeps.sweep.events import append_event
    from maskdm_sweeps.sweep.progress import ProgressLog, SweepProgress

    events = tmp_path / EVENTS_FILE
    progress = SweepProgress(events, 1.0, {"t-1": "patch r=0.5 · s0"}, {"k": "pretrain patch r=0.5 · s0"}, {})
    out = io.StringIO()
    log = ProgressLog(progress, every_seconds=1e9, stream=out)
    append_event(tmp_path, "notice", unit="t-1", message="skipped 2 unreadable images under /d")
    append_event(tmp_path, "notice", unit="k/from-0-to-10", message="milestone step_10 was damaged: retrained")
    log.update()
    assert out.getvalue().splitlines() == [
        "notice  patch r=0.5 · s0: skipped 2 unreadable images under /d",
        "notice  pretrain patch r=0.5 · s0 · branch from-0-to-10: milestone step_10 was damaged: retrained",
    ]
