"""A full disk under ``output_dir``: ``run`` ends with one block naming the file that could not be written, where
Ray's messages went, what finished, and exit 1 (no traceback, no stage started twice on the full disk); once space is
back, ``resume`` finishes with exit 0 whatever state the full disk left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from maskdm_sweeps.layout import SweepDir
from maskdm_sweeps.testing import tiny_sweep_spec

pytestmark = pytest.mark.slow
EXE = str(Path(sys.executable).with_name("maskdm-sweep"))


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs (root only; skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("needs root and permission to mount a tmpfs")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_ends_the_run_with_one_block_naming_the_file_and_resume_finishes_once_space_is_back(
    small_disk, tmp_path
):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            tiny_sweep_spec(
                "full",
                small_disk / "results",
                {"axes": {"mask.rate": [0.25, 0.5]}, "baseline": True},
                {"max_failures": 1},
                pretrain={"steps": 60},
                finetune={"steps": 60},
            )
        )
    )
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(
        b"\0" * (free - 1_600_000)
    )  # 1.6 MB left: the MLflow store (about 1 MB) fits, the first checkpoints do not
    env = {**os.environ, "MASKDM_CACHE": str(tmp_path / "cache"), "RAY_AUTH_MODE": "disabled"}
    layout = SweepDir(small_disk / "results", "full")
    sweep_dir = layout.path
    run = subprocess.run([EXE, "run", str(spec)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 1, run.stderr[-3000:]
    # Ray's tracebacks went to driver.log; the run's last words are ours: the file, the log, the way on
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    block = run.stderr.strip().splitlines()[-3:]
    assert block[0].startswith("error: ") and block[0].endswith(": No space left on device"), run.stderr[-3000:]
    named = Path(block[0].removeprefix("error: ").removesuffix(": No space left on device"))
    # the file (or the directory being made) that could not be written, not the results root
    assert named.is_relative_to(small_disk / "results") and named not in (small_disk / "results", sweep_dir), block[0]
    assert block[1].startswith(f"Ray's messages and tracebacks: {layout.driver_log}"), block
    assert block[2].startswith("sweep full: ") and f"maskdm-sweep resume {sweep_dir}" in block[2], block
    starts = Counter(
        e["key"] for e in map(json.loads, layout.events.read_text().splitlines()) if e["event"] == "stage_start"
    )
    assert starts and set(starts.values()) == {1}, starts  # max_failures is 1, but no stage ran twice on it
    filler.unlink()
    done = subprocess.run([EXE, "resume", str(sweep_dir)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sweep full: 3/3 trials finished" in done.stdout
