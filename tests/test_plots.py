"""The plots of a sweep drawn from hand-made ``trials`` and ``curves``: what the artists show, not just that a PNG
exists (FID vs training TFLOPs with its bands and target crossings, FID vs mask rate with its error bars)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer

from maskdm_sweeps.layout import PLOTS_DIR
from maskdm_sweeps.results.analysis import comparison_table, speedup_table
from maskdm_sweeps.results.plots import (
    fid_vs_mask_rate_figure,
    fid_vs_tflops_figure,
    plot_fid_vs_tflops,
    seed_spread,
    write_plots,
)
from maskdm_sweeps.testing import synthetic_tables as _tables
from maskdm_sweeps.testing import synthetic_trial as _trial

# Baseline: 1 TFLOP per step, FID 60 -> 10 over 100 steps; its final FID 10 is reached at 100 TFLOPs.
BASELINE = {25: 60.0, 50: 40.0, 75: 20.0, 100: 10.0}
ARM = "patch r=0.9"


def _two_seed_sweep(pretrain_tflops: float = 5.0):
    """Baseline (2 seeds) and one masked arm (2 seeds) whose mean FID is 30, 10, 7 at 15, 25, 45 TFLOPs."""
    return _tables(
        _trial("b0", "baseline", 0, BASELINE),
        _trial("b1", "baseline", 1, {k: v + 2 for k, v in BASELINE.items()}),
        _trial("m0", ARM, 0, {10: 40.0, 20: 15.0, 40: 8.0}, pretrain_tflops),
        _trial("m1", ARM, 1, {10: 20.0, 20: 5.0, 40: 6.0}, pretrain_tflops),
    )


def _by_gid(ax, prefix: str) -> dict:
    arts = list(ax.lines) + list(ax.collections)
    return {a.get_gid()[len(prefix) :]: a for a in arts if (a.get_gid() or "").startswith(prefix)}


def _band_at(band: PolyCollection, x: float) -> tuple[float, float]:
    """The band's lower and upper edge at ``x`` (one of its evaluations)."""
    verts = np.concatenate([p.vertices for p in band.get_paths()])
    ys = verts[np.isclose(verts[:, 0], x), 1]
    return float(ys.min()), float(ys.max())


# ------------------------------------------------------------------------------------------ FID vs TFLOPs
def test_the_band_spans_the_two_seeds_min_and_max_around_their_mean_at_each_evaluation():
    trials, curves = _two_seed_sweep()
    ax = fid_vs_tflops_figure(trials, curves, {}).axes[0]
    mean, band = _by_gid(ax, "mean:")[ARM], _by_gid(ax, "band:")[ARM]
    # step 10 of the arm: 5 TFLOPs pre-training + 10 fine-tuning; seeds at FID 40 and 20
    x = list(mean.get_xdata())
    assert x == pytest.approx([15.0, 25.0, 45.0])
    assert list(mean.get_ydata()) == pytest.approx([30.0, 10.0, 7.0])
    assert _band_at(band, 15.0) == pytest.approx((20.0, 40.0))
    assert _band_at(band, 45.0) == pytest.approx((6.0, 8.0))
    assert "n=2, band min-max" in mean.get_label()
    assert _band_at(_by_gid(ax, "band:")["baseline"], 50.0) == pytest.approx((40.0, 42.0))


def test_with_three_seeds_the_band_is_the_mean_plus_minus_the_std_over_seeds():
    trials, curves = _tables(
        _trial("b0", "baseline", 0, BASELINE),
        *(_trial(f"m{i}", ARM, i, {10: f, 20: f / 2}, 5.0) for i, f in enumerate((10, 20, 60))),
    )
    ax = fid_vs_tflops_figure(trials, curves, {}).axes[0]
    fids = np.array([10.0, 20.0, 60.0])
    mean, std = fids.mean(), fids.std(ddof=1)
    assert _band_at(_by_gid(ax, "band:")[ARM], 15.0) == pytest.approx((mean - std, mean + std))
    assert "n=3, band mean ± std" in _by_gid(ax, "mean:")[ARM].get_label()
    assert "baseline" not in _by_gid(ax, "band:")  # one baseline seed: no band


def test_seed_spread_keeps_only_the_evaluations_every_seed_has():
    rows = pd.DataFrame(
        {"trial_id": ["a", "a", "b"], "step": [10, 20, 10], "fid": [4.0, 2.0, 6.0], "tflops": [1.0, 2.0, 1.0]}
    )
    spread, band = seed_spread(rows)
    assert band == "min-max" and list(spread.index) == [10]
    assert spread.loc[10, ["fid", "low", "high", "n"]].tolist() == pytest.approx([5.0, 4.0, 6.0, 2])


def test_the_crossing_stars_sit_at_the_speedup_tables_compute_and_the_target():
    trials, curves = _two_seed_sweep()
    row = speedup_table(trials, curves).iloc[0]
    ax = fid_vs_tflops_figure(trials, curves, {}).axes[0]
    stars = _by_gid(ax, "crossing:")
    assert stars[ARM].get_xydata().ravel().tolist() == pytest.approx([row["arm_tflops"], row["target_fid"]])
    assert stars["baseline"].get_xydata().ravel().tolist() == pytest.approx([row["baseline_tflops"], row["target_fid"]])
    # target: the baseline's final mean FID 11; the arm's mean (30 at 15 TFLOPs, 10 at 25) passes it at 24.5
    assert row["target_fid"] == pytest.approx(11.0) and row["arm_tflops"] == pytest.approx(24.5)
    # the star has the arm's colour (that of its mean line) and the target is a dashed line at the baseline final FID
    assert stars[ARM].get_color() == _by_gid(ax, "mean:")[ARM].get_color()
    target = _by_gid(ax, "target:")
    assert len(target) == 1 and next(iter(target.values())).get_ydata()[0] == pytest.approx(11.0)
    assert next(iter(target.values())).get_linestyle() == "--"
    assert any(t.get_text() == f"{row['speedup']:.2g}x" for t in ax.texts)


def test_given_targets_draw_one_line_each_and_a_star_where_each_is_reached():
    trials, curves = _two_seed_sweep()
    table = speedup_table(trials, curves, targets=[30.0, 1.0])
    ax = fid_vs_tflops_figure(trials, curves, {}, targets=[30.0, 1.0]).axes[0]
    assert sorted(float(line.get_ydata()[0]) for line in _by_gid(ax, "target:").values()) == [1.0, 30.0]
    star = [a for a in ax.lines if a.get_gid() == f"crossing:{ARM}"]
    at30 = table[table["target_fid"] == 30.0].iloc[0]
    assert len(star) == 1  # FID 1 is never reached
    assert star[0].get_xydata().ravel().tolist() == pytest.approx([at30["arm_tflops"], 30.0])


def test_the_x_axis_is_logarithmic_only_when_compute_spans_more_than_ten_times():
    trials, curves = _two_seed_sweep()
    assert fid_vs_tflops_figure(trials, curves, {}).axes[0].get_xscale() == "linear"  # 15 .. 102 TFLOPs
    wide = _tables(_trial("b0", "baseline", 0, {1: 90.0, 1000: 10.0}), _trial("m0", ARM, 0, {1: 50.0, 10: 5.0}))
    assert fid_vs_tflops_figure(*wide, {}).axes[0].get_xscale() == "log"


def test_the_title_names_the_fid_protocol_and_the_seeds_and_the_floor_is_a_dotted_line():
    trials, curves = _tables(
        _trial("b0", "baseline", 0, BASELINE, fid_floor=3.0),
        _trial("m0", ARM, 0, {10: 30.0, 20: 10.0}, 5.0, fid_floor=5.0),
        _trial("m1", ARM, 1, {10: 20.0, 20: 8.0}, 5.0, fid_floor=4.0),
    )
    fig = fid_vs_tflops_figure(trials, curves, {"name": "demo"})
    title = fig._suptitle.get_text()
    assert title.startswith("demo: ") and "digits FID" in title and "100 samples" in title
    assert "n=1-2 seeds per arm" in title
    floor = [line for line in fig.axes[0].lines if line.get_label() == "FID floor (real images)"]
    assert len(floor) == 1 and floor[0].get_linestyle() == ":" and floor[0].get_ydata()[0] == pytest.approx(4.0)


def test_nothing_is_written_for_a_sweep_without_tflops_nor_for_one_without_finished_trials(tmp_path):
    old = _tables(
        _trial("b0", "baseline", 0, BASELINE, tflops_per_step=math.nan, pretrain_tflops=math.nan),
        _trial("m0", ARM, 0, {10: 30.0, 20: 10.0}, math.nan, math.nan),
    )
    path = tmp_path / "fid_vs_tflops.png"
    path.write_bytes(b"stale")
    assert plot_fid_vs_tflops(*old, {}, path) is None and not path.exists()
    failed = _tables(_trial("b0", "baseline", 0, BASELINE, status="failed"))
    assert fid_vs_tflops_figure(*failed, {}) is None
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    names = [p.name for p in write_plots(sweep, *old)]
    assert names == ["fid_vs_mask_rate.png", "curves.png", "fid_vs_device_hours.png"]
    assert not (sweep / PLOTS_DIR / "fid_vs_tflops.png").exists()


def test_write_plots_writes_the_tflops_plot_with_the_specs_targets(tmp_path):
    trials, curves = _two_seed_sweep()
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    paths = write_plots(sweep, trials, curves)
    assert [p.name for p in paths] == [
        "fid_vs_mask_rate.png",
        "curves.png",
        "fid_vs_device_hours.png",
        "fid_vs_tflops.png",
    ]
    for p in paths:
        assert p.parent == sweep / PLOTS_DIR and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------- FID vs mask rate
def test_the_mask_rate_error_bars_are_the_std_over_seeds_and_the_baseline_a_line_with_its_band():
    trials, _curves = _tables(
        _trial("b0", "baseline", 0, {100: 10.0}),
        _trial("b1", "baseline", 1, {100: 14.0}),
        _trial("p0", "patch r=0.5", 0, {40: 20.0}, rate=0.5),
        _trial("p1", "patch r=0.5", 1, {40: 26.0}, rate=0.5),
        _trial("p2", "patch r=0.5", 2, {40: 29.0}, rate=0.5),
        _trial("q0", ARM, 0, {40: 30.0}),
        _trial("q1", ARM, 1, {40: 34.0}),
        _trial("q2", ARM, 2, {40: 35.0}),
    )
    ax = fid_vs_mask_rate_figure(trials, {}).axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1
    (segments,) = [col.get_segments() for col in bars[0].lines[2]]
    for seg, fids, rate in zip(segments, ([20.0, 26.0, 29.0], [30.0, 34.0, 35.0]), (0.5, 0.9), strict=True):
        fids = np.array(fids)
        (x0, lo), (x1, hi) = seg
        assert x0 == x1 == pytest.approx(rate)
        assert (hi - lo) / 2 == pytest.approx(fids.std(ddof=1)) and (hi + lo) / 2 == pytest.approx(fids.mean())
    assert "mean ± std over seeds, n=3" in bars[0].get_label()
    table = comparison_table(trials)
    base = table[table["arm"] == "baseline"].iloc[0]
    hline = [line for line in ax.lines if line.get_label().startswith("baseline")]
    assert len(hline) == 1 and hline[0].get_ydata()[0] == pytest.approx(12.0) and "n=2" in hline[0].get_label()
    span = [p for p in ax.patches if p.get_alpha() == pytest.approx(0.08)]
    assert len(span) == 1  # a Rectangle or a Polygon by matplotlib version: its corners in (axes x, data y)
    ys = span[0].get_patch_transform().transform(span[0].get_path().vertices)[:, 1]
    assert (ys.min(), ys.max()) == pytest.approx((12.0 - base["fid_std"], 12.0 + base["fid_std"]))
    assert base["fid_std"] == pytest.approx(np.std([10.0, 14.0], ddof=1))


def test_final_samples_show_each_arms_last_grid_of_its_first_seed(tmp_path):
    import sys
    from pathlib import Path

    from PIL import Image

    sys.path.insert(0, str(Path(__file__).parent))
    from fake_sweep import build_sweep
    from maskdm_sweeps.layout import SweepDir
    from maskdm_sweeps.results import load
    from maskdm_sweeps.results.plots import final_samples_figure

    w = build_sweep(tmp_path, rates=(0.5, 0.9), seeds=(0, 1), baseline=True, dup_step=False)
    layout = SweepDir.of(w["dir"])
    shades = {}
    for tid in layout.trial_ids():  # an earlier grid and the last one, told apart by their grey level
        samples = layout.finetune(tid).samples
        samples.mkdir(parents=True, exist_ok=True)
        shades[tid] = 40 + 10 * len(shades)
        Image.new("L", (16, 16), 255).save(samples / "step_000000020.png")
        Image.new("L", (16, 16), shades[tid]).save(samples / "step_000000040.png")
    trials, _ = load(w["dir"])
    fig = final_samples_figure(w["dir"], trials)
    axes = fig.axes
    titles = [ax.get_title() for ax in axes]
    assert [t.split(" (")[0] for t in titles] == ["baseline", "patch r=0.5", "patch r=0.9"]  # display order
    done = trials[trials["status"] == "finished"]
    for ax, arm in zip(axes, ["baseline", "patch r=0.5", "patch r=0.9"], strict=True):
        first = done[done["arm"] == arm].sort_values("seed").iloc[0]
        assert f"(seed {first['seed']})" in ax.get_title() and f"FID {first['fid']:.1f}" in ax.get_title()
        pixels = np.asarray(ax.get_images()[0].get_array())
        assert np.allclose(pixels.ravel()[0] * 255, shades[first["trial_id"]], atol=1)  # its last grid
