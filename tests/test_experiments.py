"""Every shipped spec plans (away from its data) and validates under --smoke; one runs under --smoke end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "experiments").glob("*.yaml"))
EXE = str(Path(sys.executable).with_name("maskdm-sweep"))


def test_experiments_are_shipped():
    assert {p.name for p in SPECS} >= {"mask_rate.yaml"}


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_plan_prints_the_table_for_each_shipped_spec(spec, tmp_path):
    out = subprocess.run([EXE, "plan", str(spec), "--set", f"output_dir={tmp_path}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "trials" in out.stdout and "GPU-hours" in out.stdout


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_each_shipped_spec_is_valid_under_smoke(spec, tmp_path):
    out = subprocess.run([EXE, "validate", str(spec), "--smoke", "--set", f"output_dir={tmp_path}"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_mask_rate_spec_runs_under_smoke(tmp_path):
    env = {"MASKDM_CACHE": str(tmp_path / "cache"), "RAY_AUTH_MODE": "disabled", "PATH": "/usr/bin:/bin"}
    # one seed keeps the suite short; the 3-seed smoke run is in the README's quickstart notes
    out = subprocess.run([EXE, "run", str(ROOT / "experiments" / "mask_rate.yaml"), "--smoke",
                          "--set", f"output_dir={tmp_path}", "--set", "sweep.seeds=[0]"],
                         capture_output=True, text=True, env=env, timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    plan = json.loads((tmp_path / "mask_rate" / "plan.json").read_text())
    assert len(plan["trials"]) == 6  # 5 rates + the baseline
    for trial in plan["trials"]:
        result = json.loads((tmp_path / "mask_rate" / "trials" / trial["trial_id"] / "finetune" / "result.json").read_text())
        assert result["steps"] == 40 and result["fid"] is not None
