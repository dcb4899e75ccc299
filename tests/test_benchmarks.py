"""The benchmark scripts run (at tiny CPU shapes, no timing assertions) and print their ratio table."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_trainer_throughput_prints_a_ratio_per_mask_rate(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "trainer_throughput.py"),
            "--preset",
            "tiny",
            "--image-size",
            "8",
            "--batch",
            "8",
            "--steps",
            "4",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        env={"MASKDM_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    rates = re.findall(r"^\s+(0\.[059])\s+[\d.]+\s+([\d.]+)x$", out.stdout, flags=re.M)
    assert [r for r, _ in rates] == ["0.0", "0.5", "0.9"] and rates[0][1] == "1.00"
    saved = json.loads((tmp_path / "r.json").read_text())
    assert [row["mask_rate"] for row in saved["rows"]] == [0.0, 0.5, 0.9]


# ------------------------------------------------------------------------------------------------ benchmarks/bench.py
BENCH = ROOT / "benchmarks" / "bench.py"
TARGET_KEYS = {
    "trainer_mask0_compiled_vs_reference",
    "trainer_mask09_reduce_overhead_vs_reference",
    "trainer_mask09_over_mask0_reduce_overhead",
    "ddim100_inception_10k_seconds",
    "packing_4_over_1",
    "cpu_mask09_over_mask0",
}

# Stand-ins for the reference scripts (the real ones live outside the repository): they write the same files and
# keys, quickly, so that the subprocess plumbing runs in CI.
FAKE_REFERENCE = """
import json, os
rows = {rows}
json.dump({{"device": "cpu", "torch": "x", "rows": rows}}, open(os.path.join(os.environ["OUT"], "{name}"), "w"))
"""


def _load_bench():
    spec = importlib.util.spec_from_file_location("maskdm_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_bench(tmp_path, *args):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "MASKDM_CACHE": str(tmp_path / "cache"),
        "RAY_AUTH_MODE": "disabled",
    }
    return subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--device", "cpu", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


def _fake_reference(tmp_path) -> Path:
    ref = tmp_path / "ref"
    ref.mkdir()
    anchor = [
        {"model": "tiny", "mask_rate": 0.0, "batch": 8, "mode": "eager", "img_s": 100.0},
        {"model": "tiny", "what": "sample_forward", "batch": 8, "img_nfe_s": 800.0, "ddim100_img_s": 8.0},
        {"what": "inception_v3_299_forward", "batch": 4, "img_s": 5.0},
    ]
    headroom = [{"mode": "None", "batch": 8, "mask_rate": 0.9, "img_s": 300.0}]
    (ref / "gpu_anchor.py").write_text(FAKE_REFERENCE.format(rows=anchor, name="gpu_anchor.json"))
    (ref / "gpu_masked_headroom.py").write_text(FAKE_REFERENCE.format(rows=headroom, name="gpu_masked_headroom.json"))
    return ref


def test_bench_quick_prints_every_section_and_writes_json(tmp_path):
    out = _run_bench(
        tmp_path, "--skip-packing", "--reference", str(_fake_reference(tmp_path)), "--out", str(tmp_path / "bench.json")
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    for title in ("== trainer:", "== sampling: DDIM-100", "== FID features: Inception", "== reference:", "== targets"):
        assert title in text, text
    rates = re.findall(r"^\s*eager\s+16\s+(0\.[059])\s+\d+\s+[\d.,]+\s+[\d.]+\s+([\d.]+)x", text, flags=re.M)
    assert [r for r, _ in rates] == ["0.0", "0.5", "0.9"] and rates[0][1] == "1.00", text
    assert re.search(r"DDIM-100 \+ Inception for 10,000 images: [\d,.]+ s", text), text
    assert "compiled modes skipped on the CPU" in text

    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["errors"] == {}
    assert {"torch", "device", "device_slug", "preset", "batch", "command"} <= saved.keys()
    assert saved["device_slug"].startswith("cpu-")
    trainer = saved["sections"]["trainer"]
    assert [(r["mode"], r["mask_rate"]) for r in trainer["rows"]] == [("eager", 0.0), ("eager", 0.5), ("eager", 0.9)]
    for row in trainer["rows"]:
        assert row["flops_per_step"] > 0 and row["images_per_second"] > 0 and row["tflops"] > 0
        assert row["ratio_to_mask0"] > 0 and row["mfu"] > 0
    flops = [r["flops_per_step"] for r in trainer["rows"]]
    assert flops[0] > flops[1] > flops[2]  # fewer kept tokens, fewer FLOPs
    assert saved["sections"]["sampling"]["images_per_second"] > 0
    assert saved["sections"]["sampling"]["steps"] == 100
    strategies = {r["strategy"]: r for r in saved["sections"]["strategies"]["rows"]}
    assert list(strategies) == [
        "full tokens",
        "maskdm patch r=0.9",
        "maskdit r=0.5",
        "deferred r=0.75",
        "routing r=0.5",
    ]
    assert strategies["full tokens"]["ratio_to_full_tokens"] == 1.0 and all(
        r["images_per_second"] > 0 for r in strategies.values()
    )
    assert strategies["maskdm patch r=0.9"]["flops_ratio"] < strategies["routing r=0.5"]["flops_ratio"] < 1
    assert strategies["maskdit r=0.5"]["parameters"] > strategies["routing r=0.5"]["parameters"]
    assert "== strategies: one training step at each paper's rate" in text
    fid = saved["sections"]["fid"]
    assert fid["images_per_second"] > 0 and fid["rows"][0]["feature_dims"] == 2048
    assert fid["estimate_10k"]["total_seconds"] > 0
    comparison = saved["sections"]["reference"]["comparison"]
    assert {"ours", "reference", "ratio", "target"} <= comparison[0].keys()
    assert all(c["ratio"] is None for c in comparison)  # a CPU reference is never comparable
    assert "packing" not in saved["sections"]
    assert set(saved["targets"]) == TARGET_KEYS
    for target in saved["targets"].values():
        assert {"value", "target", "op", "met"} <= target.keys()
    # each target's verdict follows from its value, whatever this machine's speed
    for key, target in saved["targets"].items():
        value, goal = target["value"], target["target"]
        expected = None if value is None else value >= goal if target["op"] == ">=" else value < goal
        assert target["met"] is expected, (key, target)
    by_rate = {r["mask_rate"]: r["images_per_second"] for r in trainer["rows"]}
    assert saved["targets"]["cpu_mask09_over_mask0"]["value"] == pytest.approx(by_rate[0.9] / by_rate[0.0])
    ddim = saved["targets"]["ddim100_inception_10k_seconds"]
    assert (ddim["op"], ddim["target"]) == ("<", 90.0)
    assert ddim["value"] == pytest.approx(fid["estimate_10k"]["total_seconds"])  # no compiled denoiser on the CPU


@pytest.mark.slow
def test_bench_packing_runs_one_then_two_ray_trials_on_a_share_of_the_cpus_each(tmp_path):
    # whether the two trials' timed windows overlapped depends on the machine's load: not asserted
    out = _run_bench(tmp_path, "--sections", "packing", "--out", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "== packing:" in out.stdout
    rows = json.loads((tmp_path / "p.json").read_text())["sections"]["packing"]["rows"]
    assert [r["trials"] for r in rows] == [1, 2]
    cpus = os.cpu_count()
    assert [r["resources"] for r in rows] == [{"cpu": cpus}, {"cpu": cpus / 2}]
    assert rows[0]["vs_one_alone"] == 1.0
    assert all(r["aggregate_images_per_second"] > 0 for r in rows)
    assert len(rows[1]["per_trial_images_per_second"]) == 2


def test_bench_ratios_and_targets_on_a_gpu_result():
    """The GPU-only logic (reference ratios, reduce-overhead ratio, packing, 10k estimate) on made-up numbers."""
    bench = _load_bench()
    args = bench.parse_args(
        ["--device", "cpu", "--preset", "uvit-s2-cifar32", "--batch", "128", "--batch-masked", "256"]
    )
    row = lambda mode, batch, rate, ips: {"mode": mode, "batch": batch, "mask_rate": rate, "images_per_second": ips}  # noqa: E731
    result = {
        "device": "NVIDIA H200",
        "sections": {
            "trainer": {
                "rows": [
                    row("eager", 128, 0.0, 3000.0),
                    row("default", 128, 0.0, 5000.0),
                    row("default", 128, 0.9, 8000.0),
                    row("reduce-overhead", 256, 0.0, 5000.0),
                    row("reduce-overhead", 256, 0.9, 31000.0),
                ]
            },
            "sampling": {"images_per_second": 200.0, "steps": 100, "batch": 1000},
            "fid": {
                "images_per_second": 5000.0,
                "images_per_second_best": 6000.0,
                "estimate_10k": {"total_seconds": 52.0},
            },
            "packing": {"rows": [{"trials": 1, "vs_one_alone": 1.0}, {"trials": 4, "vs_one_alone": 1.5}]},
        },
    }
    anchor = {
        "device": "NVIDIA H200",
        "rows": [
            {"model": "uvit-s2-cifar32", "mode": "compile", "batch": 128, "mask_rate": 0.0, "img_s": 4000.0},
            {"model": "uvit-s2-cifar32", "mode": "eager", "batch": 128, "mask_rate": 0.0, "img_s": 2800.0},
            {"model": "uvit-s2-cifar32", "what": "sample_forward", "ddim100_img_s": 100.0},
        ],
    }
    headroom = {
        "device": "NVIDIA H200",
        "rows": [
            {"mode": "reduce-overhead", "batch": 256, "mask_rate": 0.9, "img_s": 28549.0},
            {"mode": "reduce-overhead", "batch": 256, "mask_rate": 0.0, "img_s": 4359.0},
        ],
    }
    comparison = {c["name"]: c for c in bench.reference_comparison(args, result, anchor, headroom)}
    assert comparison["trainer mask 0, batch 128, compiled"]["ratio"] == pytest.approx(1.25)
    assert comparison["trainer mask 0.9, batch 256, reduce-overhead"]["ratio"] == pytest.approx(31000 / 28549)
    assert comparison["trainer mask 0.0, batch 128, eager"]["ratio"] == pytest.approx(3000 / 2800)
    assert comparison["DDIM-100 sampling img/s"]["ratio"] == pytest.approx(2.0)
    result["sections"]["reference"] = {"comparison": list(comparison.values())}
    targets = bench.compute_targets(args, bench.torch.device("cuda"), result)
    assert set(targets) == TARGET_KEYS
    assert targets["trainer_mask0_compiled_vs_reference"]["met"] is True
    assert targets["trainer_mask09_reduce_overhead_vs_reference"]["met"] is True
    assert targets["trainer_mask09_over_mask0_reduce_overhead"]["value"] == pytest.approx(6.2)
    assert targets["ddim100_inception_10k_seconds"]["met"] is True
    assert targets["packing_4_over_1"]["met"] is False
    assert targets["cpu_mask09_over_mask0"]["met"] is None  # not a CPU run

    other_card = bench.reference_comparison(args, {**result, "device": "NVIDIA H100 80GB HBM3"}, anchor, headroom)
    assert all(c["ratio"] is None for c in other_card)  # ratios only against the same card in the same run
