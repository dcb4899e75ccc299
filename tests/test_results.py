"""maskdm_sweeps.results: a sweep directory (written here by hand, in the formats the sweep writes) -> parquet
tables, report.md and plots."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fake_sweep import DESCRIPTION, FT_STEPS, FT_TFLOPS_PER_STEP, PRE_STEPS, build_sweep, fid_of
from maskdm_sweeps.results import (
    CURVE_COLUMNS,
    TRIAL_COLUMNS,
    collect,
    comparison_table,
    load,
    write_all,
    write_plots,
    write_report,
    write_results,
)
from maskdm_sweeps.results.report import markdown_table


class Sweep:
    def __init__(self, written: dict):
        self.dir: Path = written["dir"]
        self.info: dict = written["trials"]  # trial id -> rate, seed, lr, fid, finished, pretrain_key, dup
        self.pretrains: dict = written["pretrains"]
        self.paths: dict[str, Path] = {}
        self.trials = self.curves = None


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Sweep:
    """2 mask rates x 2 seeds + a baseline over 2 seeds; (0.9, seed 1) failed at step 20; all outputs written."""
    root = tmp_path_factory.mktemp("out")
    s = Sweep(build_sweep(root, no_result=((0.9, 1),), error_for=((0.9, 1),), mlflow_for=((0.5, 0),)))
    s.paths = write_all(s.dir)
    s.trials, s.curves = load(s.dir)
    return s


def _png_pixels(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(path)


# ------------------------------------------------------------------------------------------------ trials.parquet
PA_TYPES = {
    "string": (pa.string(), pa.large_string()),
    "float64": (pa.float64(),),
    "int64": (pa.int64(),),
    "Int64": (pa.int64(),),
    "bool": (pa.bool_(),),
}


def _dtype_name(dtype) -> str:
    return "string" if isinstance(dtype, pd.StringDtype) else str(dtype)


def test_parquet_files_have_the_documented_types(sweep):
    trials_schema = pq.read_schema(sweep.dir / "trials.parquet")
    for col, dtype in TRIAL_COLUMNS.items():
        assert trials_schema.field(col).type in PA_TYPES[dtype], (col, trials_schema.field(col).type)
    curves_schema = pq.read_schema(sweep.dir / "curves.parquet")
    assert curves_schema.names == list(CURVE_COLUMNS)
    for col, dtype in CURVE_COLUMNS.items():
        assert curves_schema.field(col).type in PA_TYPES[dtype], col

    trials = pd.read_parquet(sweep.dir / "trials.parquet")
    assert list(trials.columns) == list(TRIAL_COLUMNS)  # no swept setting beyond mask.rate and seed here
    assert {c: _dtype_name(t) for c, t in trials.dtypes.items()} == TRIAL_COLUMNS
    curves = pd.read_parquet(sweep.dir / "curves.parquet")
    assert {c: _dtype_name(t) for c, t in curves.dtypes.items()} == CURVE_COLUMNS
    # collect() gives the same frames as the files
    fresh, fresh_curves = collect(sweep.dir)
    pd.testing.assert_frame_equal(fresh, trials)
    pd.testing.assert_frame_equal(fresh_curves, curves)


def test_one_row_per_trial_with_its_numbers(sweep):
    trials = sweep.trials.set_index("trial_id")
    assert len(sweep.trials) == len(sweep.info) == 6 and trials.index.is_unique
    assert set(trials.index) == set(sweep.info)
    for tid, w in sweep.info.items():
        row = trials.loc[tid]
        assert row["sweep"] == "fake" and row["stage"] == "finetune"
        assert row["seed"] == w["seed"]
        assert row["pretrain_steps"] == (0 if w["rate"] is None else PRE_STEPS)
        assert row["finetune_steps"] == FT_STEPS
        assert row["fid_backend"] == "digits-classifier" and row["fid_num_samples"] == 64
        if w["rate"] is None:
            assert row["arm"] == "baseline" and pd.isna(row["mask_strategy"]) and math.isnan(row["mask_rate"])
            assert row["effective_mask_rate"] == 0.0 and pd.isna(row["pretrain_trial_id"])
            assert row["pretrain_wall_seconds_share"] == 0.0
            assert row["gpu_hours"] == pytest.approx(50.0 / 3600)
        else:
            assert row["arm"] == f"patch r={w['rate']:g}" and row["mask_strategy"] == "patch"
            assert row["mask_rate"] == w["rate"] and row["label"] == f"mask.rate={w['rate']} seed={w['seed']}"
            assert row["effective_mask_rate"] == sweep.pretrains[w["pretrain_key"]]["effective_mask_rate"]
            assert row["pretrain_trial_id"] == f"pre-{w['pretrain_key']}" and row["pretrain_key"] == w["pretrain_key"]
            assert row["pretrain_shared_by"] == 1 and not row["pretrain_reused"]
        if w["finished"]:
            assert row["status"] == "finished" and row["fid"] == pytest.approx(w["fid"])
            assert row["steps_done"] == FT_STEPS and pd.isna(row["error"])
            if w["rate"] is not None:  # one pre-training per trial: all of its time
                assert row["wall_seconds"] == pytest.approx(150.0)
                assert row["gpu_hours"] == pytest.approx(150.0 / 3600)
        else:  # no result.json and a Tune error.txt: failed, with the metrics metrics.jsonl holds
            assert row["status"] == "failed" and "out of memory" in row["error"]
            assert row["fid"] == pytest.approx(w["fid"] + 5) and row["steps_done"] == 20
            assert row["loss_final"] == pytest.approx(0.5 / (1 + 20 / 20))
    with_run = [tid for tid, w in sweep.info.items() if (w["rate"], w["seed"]) == (0.5, 0)]
    assert trials.loc[with_run[0], "mlflow_run_id"].startswith("run")
    assert trials["mlflow_run_id"].notna().sum() == 1


def test_a_trial_without_result_or_error_is_incomplete_or_stopped(tmp_path):
    w = build_sweep(tmp_path, rates=(0.5,), seeds=(0,), baseline=False, no_result=((0.5, 0),), dup_step=False)
    trials, _ = collect(w["dir"])
    assert trials["status"].tolist() == ["incomplete"]  # no scheduler: killed or still running
    spec_path = w["dir"] / "spec.resolved.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["sweep"]["scheduler"]["type"] = "asha"
    spec_path.write_text(yaml.safe_dump(spec))
    trials, _ = collect(w["dir"])
    assert trials["status"].tolist() == ["stopped"]  # ASHA ends trials without an error
    # no result.json: the fine-tuning time is estimated as the span of its metrics.jsonl records (10 s .. 30.5 s)
    assert trials["wall_seconds"].iloc[0] == pytest.approx(100.0 + (30.5 - 10.0))


def test_the_rows_copy_the_arm_and_mask_columns_the_plan_wrote_into_the_manifest(tmp_path):
    w = build_sweep(tmp_path, rates=(0.5,), seeds=(0,), baseline=False)
    (tid,) = w["trials"]
    path = w["dir"] / "trials" / tid / "trial.json"
    before, _ = collect(w["dir"])  # a manifest without names (written before they were there): from the config
    manifest = json.loads(path.read_text())
    assert "arm" not in manifest and before["arm"].tolist() == ["patch r=0.5"]
    # names the config would not give: copied, not worked out again
    names = {
        "arm": "named r=0.25",
        "mask_columns": {"mask_strategy": "named", "mask_rate": 0.25, "mask_block_size": 4, "mask_crop_size": None},
    }
    path.write_text(json.dumps({**manifest, **names}))
    row = collect(w["dir"])[0].iloc[0]
    assert (row["arm"], row["mask_strategy"], row["mask_rate"], row["mask_block_size"]) == (
        "named r=0.25",
        "named",
        0.25,
        4,
    )
    assert pd.isna(row["mask_crop_size"]) and row["label"] == before["label"].iloc[0]


def test_a_plans_manifests_name_every_strategy_as_the_parquet_columns_do():
    from maskdm_sweeps.sweepspec import SweepSpec, build_plan
    from maskdm_sweeps.testing import tiny_trial_config

    base = tiny_trial_config(pretrain={"steps": 10}).model_dump(mode="json")
    masks = [
        {"strategy": "patch", "rate": 0.5},
        {"strategy": "block", "rate": 0.5, "block_size": 2},
        {"strategy": "crop", "crop_size": 4},
    ]
    plan = build_plan(
        SweepSpec.model_validate({"name": "names", "base": base, "sweep": {"axes": {"mask": masks}, "baseline": True}})
    )
    names = {}
    for trial in plan.trials:
        m = trial.manifest(plan.spec.resources, plan.spec_hash)
        assert json.loads(json.dumps(m, allow_nan=False)) == m  # plain JSON: no NaN for a missing rate
        names[m["arm"]] = tuple(
            m["mask_columns"][c] for c in ("mask_strategy", "mask_rate", "mask_block_size", "mask_crop_size")
        )
        assert m["arm"] == trial.arm and m["short_label"] == trial.short_label and m["label"] == trial.label
    assert names == {
        "patch r=0.5": ("patch", 0.5, None, None),
        "block b=2 r=0.5": ("block", 0.5, 2, None),
        "crop c=4": ("crop", None, None, 4),
        "baseline": (None, None, None, None),
    }


# ------------------------------------------------------------------------------------------------ curves.parquet
def test_curves_are_deduplicated_the_last_record_wins(sweep):
    curves = sweep.curves
    assert not curves.duplicated(["trial_id", "stage", "step", "metric"]).any()
    dup = next(tid for tid, w in sweep.info.items() if w["dup"])
    loss = curves[(curves["trial_id"] == dup) & (curves["stage"] == "finetune") & (curves["metric"] == "train/loss")]
    assert loss.set_index("step").loc[20, "value"] == pytest.approx(0.123)
    assert loss["step"].tolist() == [10, 20, 30, 40]
    # sorted: by trial, pre-training before fine-tuning, step, metric
    for _, g in curves.groupby("trial_id"):
        order = list(zip(g["stage"].map({"pretrain": 0, "finetune": 1}), g["step"], g["metric"], strict=True))
        assert order == sorted(order)


def test_curves_hold_the_pretraining_of_each_trial(sweep):
    curves = sweep.curves
    for tid, w in sweep.info.items():
        stages = set(curves.loc[curves["trial_id"] == tid, "stage"])
        assert stages == ({"finetune"} if w["rate"] is None else {"pretrain", "finetune"})
        fid = curves[(curves["trial_id"] == tid) & (curves["metric"] == "eval/fid")].set_index("step")["value"]
        assert fid.loc[20] == pytest.approx(w["fid"] + 5)
        if w["finished"]:
            assert fid.loc[40] == pytest.approx(w["fid"])
    pre = curves[(curves["stage"] == "pretrain") & (curves["metric"] == "train/effective_mask_rate")]
    assert set(pre["step"]) == {10, 20, 30}


# ------------------------------------------------------------------------------------------------ GPU-hours
def test_a_shared_pretraining_is_charged_whole_to_each_trial_and_split_evenly_in_the_shares(tmp_path):
    w = build_sweep(
        tmp_path,
        rates=(0.9,),
        seeds=(0,),
        baseline=False,
        lrs=(1e-4, 3e-4),
        gpus=2.0,
        pre_wall=100.0,
        ft_wall=40.0,
        dup_step=False,
    )
    trials, _ = collect(w["dir"])
    assert len(trials) == 2 and trials["pretrain_key"].nunique() == 1
    assert (trials["pretrain_shared_by"] == 2).all()
    # the shares add up to what was trained, once
    assert trials["pretrain_wall_seconds_share"].tolist() == [50.0, 50.0]
    # what each arm costs alone: its whole pre-training, whatever else the sweep held
    assert trials["pretrain_wall_seconds"].tolist() == [100.0, 100.0]
    assert trials["wall_seconds"].tolist() == [140.0, 140.0]
    assert trials["gpu_hours"].to_numpy() == pytest.approx([140.0 * 2 / 3600] * 2)
    # the swept fine-tuning lr has a column of its own and splits the arm in the comparison
    assert trials["finetune_lr"].dtype == "float64" and sorted(trials["finetune_lr"]) == [1e-4, 3e-4]
    table = comparison_table(trials)
    assert len(table) == 2 and set(table["finetune_lr"]) == {1e-4, 3e-4}


def test_a_pretraining_this_sweep_did_not_train_is_reused(tmp_path):
    w = build_sweep(tmp_path, rates=(0.5,), seeds=(0, 1), baseline=False, dup_step=False)
    events = w["dir"] / "events.jsonl"
    first = next(iter(w["pretrains"]))
    kept = [ln for ln in events.read_text().splitlines() if first not in ln]  # trained by an earlier sweep
    events.write_text("\n".join(kept) + "\n")
    trials, _ = collect(w["dir"])
    assert dict(zip(trials["pretrain_key"], trials["pretrain_reused"], strict=True)) == {
        k: k == first for k in w["pretrains"]
    }


def test_searched_trials_missing_from_the_plan_are_found_by_their_manifests(tmp_path):
    """A random search: trial ids plan.json does not list, sharing a planned pre-training (named by the manifest)."""
    w = build_sweep(tmp_path, rates=(0.5,), seeds=(0,), baseline=False, method="random", dup_step=False)
    ((tid, info),) = w["trials"].items()
    src = w["dir"] / "trials" / tid
    for new, lr in (("t-sampled001", 1e-4), ("t-sampled002", 3e-4)):
        dst = w["dir"] / "trials" / new / "finetune"
        dst.mkdir(parents=True)
        for f in ("metrics.jsonl", "result.json"):
            (dst / f).write_bytes((src / "finetune" / f).read_bytes())
        cfg = json.loads((src / "finetune" / "config.json").read_text())
        cfg["finetune"]["lr"] = lr
        (dst / "config.json").write_text(json.dumps(cfg))
        manifest = json.loads((src / "trial.json").read_text())
        assignments = {"mask.rate": 0.5, "finetune.lr": lr, "seed": 0}
        manifest.update(
            trial_id=new, assignments=assignments, config=cfg, label=f"mask.rate=0.5 finetune.lr={lr:.3g} seed=0"
        )
        (dst.parent / "trial.json").write_text(json.dumps(manifest))
    shutil.rmtree(src)  # a random search runs the sampled trials, not the planned one
    trials, curves = collect(w["dir"])
    assert sorted(trials["trial_id"]) == ["t-sampled001", "t-sampled002"]
    assert (trials["pretrain_key"] == info["pretrain_key"]).all()
    assert (trials["pretrain_shared_by"] == 2).all()  # counted from the trials found, not from the plan
    assert trials["pretrain_wall_seconds_share"].tolist() == [50.0, 50.0]
    assert sorted(trials["label"]) == [
        "mask.rate=0.5 finetune.lr=0.0001 seed=0",
        "mask.rate=0.5 finetune.lr=0.0003 seed=0",
    ]
    assert sorted(trials["finetune_lr"]) == [1e-4, 3e-4]  # the searched key gets a column of its own
    assert set(curves.loc[curves["trial_id"] == "t-sampled001", "stage"]) == {"pretrain", "finetune"}


# ------------------------------------------------------------------------------------------------ report
def test_comparison_table_is_mean_and_std_over_seeds(sweep):
    table = comparison_table(sweep.trials)
    assert table["arm"].tolist() == ["baseline", "patch r=0.5", "patch r=0.9"]  # one row per arm, baseline first
    for _, row in table.iterrows():
        rate = None if row["arm"] == "baseline" else float(row["arm"].split("=")[1])
        everyone = [w for w in sweep.info.values() if w["rate"] == rate]
        fids = np.array([w["fid"] for w in everyone if w["finished"]])
        assert row["n_trials"] == len(everyone) and row["n_seeds"] == len(fids)
        assert row["fid_mean"] == pytest.approx(fids.mean())
        if len(fids) > 1:
            assert row["fid_std"] == pytest.approx(np.std(fids, ddof=1))
        else:
            assert math.isnan(row["fid_std"])
        assert row["fid_min"] == pytest.approx(fids.min())
    assert table.loc[table["arm"] == "patch r=0.9", "n_seeds"].item() == 1  # the failed seed does not count


def test_report_answers_the_question(sweep):
    text = (sweep.dir / "report.md").read_text()
    assert sweep.paths["report"] == sweep.dir / "report.md"
    assert text.startswith("# Sweep `fake`") and DESCRIPTION in text.split("## ")[0]
    for section in (
        "## FID by arm",
        "## Against the baseline at equal fine-tuning steps",
        "## At equal GPU-hours",
        "## Best trial",
        "## Trials that did not finish",
        "## Plots",
    ):
        assert section in text
    table = comparison_table(sweep.trials)
    r05 = table.set_index("arm").loc["patch r=0.5"]
    assert f"| patch r=0.5 | 0.500 | 2 | 2 | {r05['fid_mean']:.2f} | {r05['fid_std']:.2f} |" in text
    best = min((w["fid"], tid) for tid, w in sweep.info.items() if w["finished"])
    assert f"`{best[1]}`" in text.split("## Best trial")[1]
    # at equal steps: the evaluation at step 20 and the final one at 40, differences to the baseline
    steps = text.split("## Against the baseline")[1].split("##")[0]
    base = np.mean([fid_of(None, s) for s in (0, 1)])
    r05 = np.mean([fid_of(0.5, s) for s in (0, 1)])
    assert f"| 20 | {base + 5:.2f} | {r05 + 5:.2f} ({r05 - base:+.2f}) |" in steps
    assert f"| 40 | {base:.2f} | {r05:.2f} ({r05 - base:+.2f}) |" in steps
    assert "only baseline has a FID" in text and "Pareto-optimal arms: baseline, patch r=0.5." in text
    assert "out of memory" in text.split("## Trials that did not finish")[1]


def test_report_headline_is_the_speedup_and_calls_no_win_inside_the_seeds_spread(sweep):
    text = (sweep.dir / "report.md").read_text()
    assert text.index("## Speed-up") < text.index("## FID by arm")  # the answer comes first
    head = text.split("## Speed-up")[1].split("\n## ")[0]
    # baseline: mean FID 65.85 at step 20 and 60.85 (its final, the target) at step 40 = 40 TFLOPs; patch r=0.5:
    # its first evaluation (step 20) is already below, at 30 x 0.5 pre-training + 20 fine-tuning TFLOPs
    target = np.mean([fid_of(None, s) for s in (0, 1)])
    arm = 30 * (1 - 0.5) + 20 * FT_TFLOPS_PER_STEP
    assert (
        f"patch r=0.5: reaches the baseline's final FID {target:.2f} with {arm / 40:.2f}x the baseline's "
        f"training compute ({arm:.4g} against 40 TFLOPs), a speed-up of {40 / arm:.2f}x (90% interval"
    ) in head
    # resampling the arm cannot move it (every resample is below the target at its first evaluation); the
    # baseline's seed-0 pair crosses between its evaluations, its seed-1 pair (61.7 at the end) never does
    low = (20 + 20 * (65 - target) / 5) / arm
    assert f"{low:.2f}x to unbounded: in some resamples the baseline never gets there, 2 seeds; baseline 2)" in head
    assert "Masked pre-training pays in this run for: patch r=0.5, patch r=0.9" in head
    # the final FIDs: patch r=0.5 seeds 50.0 and 51.7 against the baseline's 60.0 and 61.7: beyond the spread
    final = text.split("## Against the baseline")[1].split("\n## ")[0]
    assert "beyond the seeds' spread and twice the evaluation noise: patch r=0.5, patch r=0.9." in final


def test_markdown_table_helper():
    df = pd.DataFrame({"a": pd.Series(["x", None], dtype="string"), "b": [1.234, float("nan")], "c": [1, 2]})
    assert markdown_table(df).splitlines() == [
        "| a | b | c |",
        "| --- | ---: | ---: |",
        "| x | 1.23 | 1 |",
        "| – | – | 2 |",
    ]


# ------------------------------------------------------------------------------------------------ plots
def test_plots_are_real_images(sweep):
    names = {"plot_fid_vs_mask_rate", "plot_curves", "plot_fid_vs_device_hours"}
    assert names <= set(sweep.paths)
    for name in names:
        path = sweep.paths[name]
        assert path.parent == sweep.dir / "plots" and path.suffix == ".png"
        pixels = _png_pixels(path)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300 and pixels[..., :3].var() > 0.001


def test_plots_of_a_one_trial_sweep(tmp_path):
    w = build_sweep(tmp_path, rates=(), seeds=(0,), baseline=True, dup_step=False)
    paths = write_plots(w["dir"])  # computes the parquet files first
    assert (w["dir"] / "trials.parquet").exists()
    assert [p.name for p in paths] == [
        "fid_vs_mask_rate.png",
        "curves.png",
        "fid_vs_device_hours.png",
        "fid_vs_tflops.png",
    ]
    for p in paths:
        assert _png_pixels(p)[..., :3].var() > 0.001
    assert write_report(w["dir"]).read_text().count("| baseline |") >= 2


def test_an_empty_sweep_gives_typed_empty_tables(tmp_path):
    (tmp_path / "empty").mkdir()
    paths = write_results(tmp_path / "empty")
    trials = pd.read_parquet(paths["trials"])
    assert len(trials) == 0 and {c: _dtype_name(t) for c, t in trials.dtypes.items()} == TRIAL_COLUMNS
    assert len(pd.read_parquet(paths["curves"])) == 0
    assert "trials: 0" in write_report(tmp_path / "empty").read_text()


def test_load_recomputes_when_missing(tmp_path):
    w = build_sweep(tmp_path, rates=(0.5,), seeds=(0,), baseline=False, dup_step=False)
    trials, curves = load(w["dir"])
    assert len(trials) == 1 and len(curves) > 0 and (w["dir"] / "curves.parquet").exists()


def test_results_import_neither_ray_nor_mlflow():
    code = (
        "import sys, maskdm_sweeps.results; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'mlflow', 'torch'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
