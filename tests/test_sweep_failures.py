"""A failure no retry can fix (here: an image that stops decoding after validation) fails its stage once, naming
the file, and Ray's tracebacks of it go to ``<sweep>/driver.log`` instead of the terminal."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image

from maskdm_sweeps.sweep import read_events, run_sweep
from maskdm_sweeps.sweepspec import load_spec
from maskdm_sweeps.testing import tiny_sweep_spec, write_png_with_a_broken_stream

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


def test_an_image_that_stops_decoding_fails_its_stage_once_naming_the_file(tmp_path, capfd):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (60 * i, 20, 200)).save(images / f"{i}.png")
    spec = tiny_sweep_spec(
        "bad-image",
        tmp_path / "results",
        {},
        {"max_failures": 1},
        pretrain={"steps": 0},
        data={"name": "image_folder", "path": str(images), "image_size": 8},
    )
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    plan = load_spec(tmp_path / "spec.yaml")  # validated while every image decodes
    write_png_with_a_broken_stream(images / "2.png")  # then one stops decoding: the trial's cache build meets it
    (trial,) = plan.trials

    outcome = run_sweep(plan, track=False)

    assert outcome.exit_code == 1 and str(images / "2.png") in outcome.failed[trial.trial_id], outcome.failed
    events = [e for e in read_events(plan.sweep_dir) if e.get("key") == trial.trial_id]
    assert [e["event"] for e in events] == ["stage_start", "stage_error"]  # started once: the retries stop at once
    assert events[1]["final"] == "data" and "2.png does not decode" in events[1]["error"]
    log = Path(plan.layout.driver_log).read_text()
    assert "Trial task failed" in log and "NotRetried" in log  # Tune's tracebacks, one per attempt, kept here
    assert "Trial task failed" not in capfd.readouterr().err
