"""The benchmark scripts run (at tiny CPU shapes, no timing assertions) and print their ratio table."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_trainer_throughput_prints_a_ratio_per_mask_rate(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "trainer_throughput.py"), "--preset", "tiny", "--image-size", "8",
         "--batch", "8", "--steps", "4", "--device", "cpu", "--out", str(tmp_path / "r.json")],
        capture_output=True, text=True, env={"MASKDM_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    rates = re.findall(r"^\s+(0\.[059])\s+[\d.]+\s+([\d.]+)x$", out.stdout, flags=re.M)
    assert [r for r, _ in rates] == ["0.0", "0.5", "0.9"] and rates[0][1] == "1.00"
    saved = json.loads((tmp_path / "r.json").read_text())
    assert [row["mask_rate"] for row in saved["rows"]] == [0.0, 0.5, 0.9]
