"""A full disk under ``output_dir``: ``run`` ends with one line naming the path and the error, what finished, and
exit 1 (no traceback); once space is back, ``resume`` finishes with exit 0 whatever state the full disk left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maskdm_sweeps.testing import tiny_sweep_spec

pytestmark = pytest.mark.slow
EXE = str(Path(sys.executable).with_name("maskdm-sweep"))


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs (root only; skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and permission to mount a tmpfs")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_ends_the_run_with_one_line_and_resume_finishes_once_space_is_back(small_disk, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_sweep_spec(
        "full", small_disk / "results", {"axes": {"mask.rate": [0.25, 0.5]}, "baseline": True},
        {"max_failures": 0}, pretrain={"steps": 60}, finetune={"steps": 60})))
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * (free - 400_000))  # about 400 kB left: the first checkpoints fill it
    env = {**os.environ, "MASKDM_CACHE": str(tmp_path / "cache"), "RAY_AUTH_MODE": "disabled"}
    run = subprocess.run([EXE, "run", str(spec)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 1, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith(("error: ", "FAILED "))]
    assert errors and all("No space left on device" in line for line in errors), run.stderr[-3000:]
    # Ray logs its own tracebacks on the way; the run's last words are ours: the error, what finished, the way on
    last = run.stderr.strip().splitlines()[-2:]
    assert last[0].startswith("error: ") and str(small_disk) in last[0], run.stderr[-3000:]
    assert last[1].startswith("sweep full: ") and "trials finished" in last[1]
    assert f"maskdm-sweep resume {small_disk / 'results' / 'full'}" in last[1]
    filler.unlink()
    done = subprocess.run([EXE, "resume", str(small_disk / "results" / "full")], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sweep full: 3/3 trials finished" in done.stdout
