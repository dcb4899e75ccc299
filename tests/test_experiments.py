"""Every shipped spec plans (away from its data) and validates under --smoke; the quickstart and mask_rate specs run
under --smoke end to end, checked through what they leave: parquet, report, plots and MLflow runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maskdm_sweeps.cli import main
from maskdm_sweeps.layout import MLFLOW_DB, SweepDir
from maskdm_sweeps.testing import tiny_sweep_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "experiments").glob("*.yaml"))
EXE = str(Path(sys.executable).with_name("maskdm-sweep"))
SHIPPED = {
    "mask_rate.yaml",
    "masking_strategy.yaml",
    "budget.yaml",
    "transfer.yaml",
    "lr_search.yaml",
    "methods.yaml",
    "quickstart.yaml",
    "quickstart_adaptive.yaml",
    "adaptive.yaml",
}


def test_experiments_are_shipped():
    assert {p.name for p in SPECS} == SHIPPED


def test_every_spec_says_what_it_asks_and_points_editors_to_the_schema():
    for spec in SPECS:
        lines = spec.read_text().splitlines()
        assert lines[0] == "# yaml-language-server: $schema=./maskdm-sweep.schema.json", spec.name
        assert lines[1].startswith("# ") and lines[1].rstrip().endswith("?"), f"{spec.name}: no question first"
        assert any("maskdm-sweep run" in line for line in lines if line.startswith("#")), spec.name


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_plan_prints_the_table_for_each_shipped_spec(spec, tmp_path, capsys):
    assert main(["plan", str(spec), "--set", f"output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "trials" in out and "GPU-hours" in out


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_each_shipped_spec_is_valid_under_smoke(spec, tmp_path, capsys):
    assert main(["validate", str(spec), "--smoke", "--set", f"output_dir={tmp_path}"]) == 0, capsys.readouterr().err


def run_smoke(spec: str, tmp_path: Path, *overrides: str) -> str:
    env = {
        "MASKDM_CACHE": str(tmp_path / "cache"),
        "RAY_AUTH_MODE": "disabled",
        "PATH": "/usr/bin:/bin",
        "COLUMNS": "200",
    }
    args = [EXE, "run", str(ROOT / "experiments" / spec), "--smoke", "--set", f"output_dir={tmp_path}"]
    for item in overrides:
        args += ["--set", item]
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def check_results(out_dir: Path, name: str, n_trials: int, n_pretrains: int) -> None:
    """Parquet rows per trial with a final FID, a report with the FID table, real plots, and the MLflow runs."""
    from mlflow import MlflowClient

    from maskdm_sweeps.results import load

    sweep = SweepDir(out_dir, name)
    trials, curves = load(sweep.path)
    assert len(trials) == n_trials and (trials["status"] == "finished").all() and trials["fid"].notna().all()
    assert set(curves["trial_id"]) == set(trials["trial_id"]) and "eval/fid" in set(curves["metric"])
    assert "## FID by arm" in sweep.report.read_text()
    for png in ("curves", "fid_vs_mask_rate", "fid_vs_device_hours"):
        assert (sweep.plots / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = MlflowClient(f"sqlite:///{out_dir / MLFLOW_DB}")
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    assert len(parents) == 1 and len(runs) == 1 + n_trials + n_pretrains
    assert all(r.info.status == "FINISHED" for r in runs)
    by_id = {r.info.run_id: r for r in runs}
    for row in trials.itertuples():
        run = by_id[row.mlflow_run_id]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.metrics["eval/fid"] == pytest.approx(row.fid)


@pytest.mark.slow
def test_quickstart_runs_under_smoke_and_prints_the_table_and_paths(tmp_path):
    out = run_smoke("quickstart.yaml", tmp_path)
    check_results(tmp_path, "quickstart", n_trials=6, n_pretrains=4)  # (baseline + 2 rates) x 2 seeds
    rows = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│ ")]
    assert rows[-3:] == ["baseline", "patch r=0.5", "patch r=0.9"]  # the FID-by-arm table, whole arm names
    for arm in ("patch r=0.5", "patch r=0.9"):  # and each arm's speed-up in words
        assert any(line.startswith(f"speed-up: {arm}: ") for line in out.splitlines()), out
    sweep = SweepDir(tmp_path, "quickstart")
    for path in (
        sweep.trials_parquet,
        sweep.curves_parquet,
        sweep.report,
        sweep.plots / "fid_vs_mask_rate.png",
        sweep.plots / "fid_vs_tflops.png",
        sweep.plots / "final_samples.png",
    ):
        assert str(path) in out
    assert f"maskdm-sweep ui {sweep.path}" in out


@pytest.mark.slow
def test_mask_rate_spec_runs_under_smoke(tmp_path):
    # one seed and the two extreme rates keep the suite short (every spec's full grid validates under --smoke above)
    run_smoke("mask_rate.yaml", tmp_path, "sweep.seeds=[0]", "sweep.axes={mask.rate: [0.1, 0.9]}")
    plan = json.loads(SweepDir(tmp_path, "mask_rate").plan_file.read_text())
    assert len(plan["trials"]) == 3  # 2 rates + the baseline
    check_results(tmp_path, "mask_rate", n_trials=3, n_pretrains=2)


def test_relative_paths_are_made_absolute_where_the_command_runs(tmp_path, monkeypatch):
    """Trial processes run in Ray Tune's trial directories: paths must not stay relative to their cwd."""
    from maskdm_sweeps.sweepspec import load_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "faces").mkdir()
    spec = tmp_path / "spec.yaml"
    data = tiny_sweep_spec("rel", tmp_path, data={"name": "image_folder", "path": "faces", "image_size": 16})
    del data["output_dir"]  # left at its default, "results"
    spec.write_text(yaml.safe_dump(data))
    plan = load_spec(spec, check_paths=False)
    assert plan.spec.output_dir == tmp_path / "results"  # absolute in the spec that travels to the trials
    assert all(t.config.data.path == tmp_path / "faces" for t in plan.trials)


@pytest.mark.slow
def test_budget_spec_trains_one_pretraining_per_seed_for_all_its_lengths(tmp_path):
    run_smoke(
        "budget.yaml",
        tmp_path,
        "sweep.seeds=[0,1]",
        "sweep.zip={pretrain.steps: [0, 20000, 80000], finetune.steps: [100000, 80000, 20000]}",
    )  # two seeds, two of the four lengths: a shorter suite
    events = [json.loads(line) for line in SweepDir(tmp_path, "budget").events.read_text().splitlines()]
    pretrainings = [e for e in events if e["event"] == "stage_done" and e["stage"] == "pretrain"]
    assert len(pretrainings) == 2 and {e["steps"] for e in pretrainings} == {30}  # the longest length, per seed
    check_results(tmp_path, "budget", n_trials=6, n_pretrains=2)  # one MLflow run per pre-training run
    from maskdm_sweeps.results import load

    trials, _ = load(tmp_path / "budget")
    masked = trials[trials["pretrain_steps"] > 0]
    per_step = masked["pretrain_tflops"] / masked["pretrain_steps"]
    assert per_step.to_numpy() == pytest.approx([per_step.iloc[0]] * len(masked))  # each charged its own length
    for _, group in masked.groupby("pretrain_key"):  # the shares add up to one 30-step run per seed
        assert group["pretrain_tflops_share"].sum() == pytest.approx(30 * per_step.iloc[0])


@pytest.mark.slow
def test_methods_spec_compares_every_strategy_with_its_compute_under_smoke(tmp_path):
    run_smoke("methods.yaml", tmp_path, "sweep.seeds=[0]")
    check_results(tmp_path, "methods", n_trials=6, n_pretrains=5)  # 5 strategies + the equal-compute baseline
    from maskdm_sweeps.results import load

    trials, _ = load(tmp_path / "methods")
    assert set(trials["arm"]) == {
        "baseline",
        "patch r=0.9",
        "maskdit r=0.5",
        "deferred r=0.75",
        "routing r=0.5",
        "sprint r=0.75",
    }
    per_step = (trials["pretrain_tflops"] / trials["pretrain_steps"]).dropna()
    assert per_step.nunique() == 5  # every strategy's step costs its own FLOPs
    report = SweepDir(tmp_path, "methods").report.read_text()
    for arm in ("maskdit r=0.5", "deferred r=0.75", "routing r=0.5", "sprint r=0.75"):
        assert arm in report.split("## Speed-up")[1].split("##")[0]  # each arm's speed-up, by compute
    assert "TFLOPs" in report
