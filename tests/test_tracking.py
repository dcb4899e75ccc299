"""MLflow tracking against a real SQLite store: nesting, params, tags, metric histories, re-attached retries; the
``report`` and ``ui`` commands on the finished sweep, the UI checked in a real headless Chromium."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from maskdm_sweeps.sweep import run_sweep
from maskdm_sweeps.sweepspec import load_spec
from maskdm_sweeps.testing import crash_once

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

BASE = {
    "data": {"name": "digits", "image_size": 8},
    "model": {"preset": "tiny"},
    "mask": {"strategy": "patch", "rate": 0.5},
    "pretrain": {"steps": 20, "batch_size": 16},
    "finetune": {"steps": 30, "batch_size": 16},
    "eval": {
        "num_samples": 32,
        "batch_size": 32,
        "sampling_steps": 4,
        "grid_size": 16,
        "backend": "digits-classifier",
        "every_steps": 15,
    },
    "runtime": {"device": "cpu", "log_every_steps": 5, "checkpoint_every_steps": 5},
}


def make_plan(tmp_path: Path, name: str, sweep: dict, resources=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = {
        "name": name,
        "output_dir": str(tmp_path / "results"),
        "base": BASE,
        "sweep": sweep,
        "resources": {"gpus": 0, "cpus": 1, **(resources or {})},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    return load_spec(tmp_path / "spec.yaml")


def runs_of(plan):
    c = MlflowClient(f"sqlite:///{(Path(plan.spec.output_dir) / 'mlflow.db').resolve()}")
    exp = c.get_experiment_by_name(plan.spec.name)
    return c, c.search_runs([exp.experiment_id], max_results=1000)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, ray_session):
    """A finished sweep: baseline plus two mask rates (two pre-trainings, three fine-tunings)."""
    plan = make_plan(
        tmp_path_factory.mktemp("tracked"), "track", {"axes": {"mask.rate": [0.25, 0.5]}, "baseline": True}
    )
    assert run_sweep(plan).exit_code == 0
    return plan


def test_child_runs_are_named_for_people_and_keep_their_hashes_in_tags(tracked):
    _, runs = runs_of(tracked)
    names = {r.info.run_name: r.data.tags for r in runs if r.data.tags.get("kind") != "sweep"}
    assert set(names) == {
        "patch r=0.25 · s0",
        "patch r=0.5 · s0",
        "baseline · s0",
        "pretrain patch r=0.25 · s0",
        "pretrain patch r=0.5 · s0",
    }
    for name, tags in names.items():
        assert tags["trial_id"].startswith("t-")  # the hash: a tag, not the name
        assert not name.startswith("pretrain") or len(tags["pretrain_key"]) == 16


def test_parent_and_child_runs_nest_with_params_tags_metrics_and_artifacts(tracked):
    plan = tracked
    c, runs = runs_of(plan)
    parents = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1 == 2 + 3  # two shared pre-trainings, three fine-tunings
    assert parent.data.tags["spec_hash"] == plan.spec_hash and parent.data.tags["git_commit"]
    # the sweep made its experiment as model training (MLflow's UI tells it from GenAI work by this tag)
    assert c.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {"spec.resolved.yaml", "plan.json"}
    # the sweep's answer on the parent run: each arm's target (the baseline's final FID) as the report has it
    from maskdm_sweeps.results import headline, load

    table, _ = headline(plan.sweep_dir, *load(plan.sweep_dir))
    assert len(table) == 2
    for _, row in table.iterrows():
        arm = row["arm"].replace("=", "_")
        assert parent.data.metrics[f"target_fid/{arm}"] == pytest.approx(row["target_fid"])
        assert (f"speedup/{arm}" in parent.data.metrics) == bool(row["reached"] and row["baseline_reached"])
    pre = {r.data.tags["pretrain_key"]: r for r in children if r.data.tags["stage"] == "pretrain"}
    for run in children:
        tags, params = run.data.tags, run.data.params
        assert run.info.status == "FINISHED"
        assert params["finetune.steps"] == "30" and params["data.name"] == "digits"
        assert "cost/gpu_hours" in run.data.metrics and run.data.metrics["cost/wall_seconds"] > 0
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")]
        assert steps == list(range(5, (20 if tags["stage"] == "pretrain" else 30) + 1, 5))
        if tags["stage"] == "finetune":
            assert [m.step for m in c.get_metric_history(run.info.run_id, "eval/fid")] == [15, 30]
            assert {a.path for a in c.list_artifacts(run.info.run_id, "samples")} == {
                "samples/step_000000015.png",
                "samples/step_000000030.png",
            }
            if tags["pretrain_key"]:
                assert tags["pretrain_run_id"] == pre[tags["pretrain_key"]].info.run_id
            trial_dir = plan.trial_dir(tags["trial_id"]) / "finetune"
            assert json.loads((trial_dir / "mlflow_run.json").read_text())["run_id"] == run.info.run_id


def test_a_cpu_sweep_bills_no_gpu_alike_in_mlflow_and_in_trials_parquet(tracked):
    from maskdm_sweeps.results import load

    _c, runs = runs_of(tracked)
    trials, _ = load(tracked.sweep_dir)
    by_run = {r.info.run_id: r.data.metrics for r in runs if r.data.tags.get("stage") == "finetune"}
    assert len(by_run) == len(trials) == 3
    for _, row in trials.iterrows():
        cost = by_run[row["mlflow_run_id"]]
        assert cost["cost/gpu_hours"] == row["gpu_hours"] == row["gpus_per_trial"] == 0.0  # no GPU was held
        assert row["device"] == "cpu" and row["devices_per_trial"] == 1.0
        # the fine-tuning's own device-hours: the same seconds and the same billing rule on both sides
        assert cost["cost/device_hours"] == pytest.approx(row["finetune_wall_seconds"] / 3600.0, rel=1e-9)
        assert row["device_hours"] == pytest.approx(row["wall_seconds"] / 3600.0, rel=1e-9)
        # compute: the fine-tuning's TFLOPs alike; the trial's training TFLOPs add its whole pre-training's run
        assert cost["cost/train_tflops"] == pytest.approx(row["finetune_tflops"], rel=1e-12)
        assert row["finetune_tflops"] > 0
        # pre-trainings are not evaluated here (eval.stages: [finetune]): all of the trial's evaluation is its own
        assert cost["cost/eval_tflops"] == pytest.approx(row["eval_tflops"], rel=1e-12) and row["eval_tflops"] > 0
        pre = _pretrain_cost(runs, row)
        assert row["train_tflops"] == pytest.approx(row["finetune_tflops"] + pre, rel=1e-12)
        assert (pre == 0) == (row["arm"] == "baseline")


def test_the_arm_and_label_tags_mean_what_the_arm_and_label_columns_mean(tracked):
    from maskdm_sweeps.results import load

    _, runs = runs_of(tracked)
    trials, _ = load(tracked.sweep_dir)
    finetunes = {r.info.run_id: r.data.tags for r in runs if r.data.tags.get("stage") == "finetune"}
    assert sorted(trials["arm"]) == ["baseline", "patch r=0.25", "patch r=0.5"]
    for _, row in trials.iterrows():
        tags = finetunes[row["mlflow_run_id"]]
        assert (tags["arm"], tags["label"]) == (row["arm"], row["label"])  # e.g. patch r=0.5, mask.rate=0.5 seed=0
    # a pre-training serves trials of one arm: it has their arm, and no trial's label
    arms = dict(zip(trials["pretrain_key"].dropna(), trials["arm"][trials["pretrain_key"].notna()], strict=True))
    pretrains = [r.data.tags for r in runs if r.data.tags.get("stage") == "pretrain"]
    assert len(pretrains) == 2
    for tags in pretrains:
        assert tags["arm"] == arms[tags["pretrain_key"]] and "label" not in tags


def _pretrain_cost(runs, row) -> float:
    """The ``cost/train_tflops`` MLflow logged for the row's pre-training run (0 for the baseline)."""
    if row["arm"] == "baseline":
        return 0.0
    pre = [
        r
        for r in runs
        if r.data.tags.get("stage") == "pretrain" and r.data.tags.get("pretrain_key") == row["pretrain_key"]
    ]
    return pre[0].data.metrics["cost/train_tflops"]


def test_a_retried_trial_logs_into_the_run_it_started(tmp_path):
    plan = make_plan(tmp_path, "retry", {"axes": {"mask.rate": [0.5]}}, {"max_failures": 1})
    assert run_sweep(plan, reporters=crash_once("finetune", 17)).exit_code == 0
    c, runs = runs_of(plan)
    finetunes = [r for r in runs if r.data.tags.get("stage") == "finetune"]
    assert len(finetunes) == 1  # re-attached, not duplicated
    history = c.get_metric_history(finetunes[0].info.run_id, "train/loss")
    steps = sorted({m.step for m in history})
    assert steps == list(range(5, 31, 5))  # continuous: no gap where the process died


def test_report_command_rewrites_the_results_and_prints_fid_by_arm(tracked):
    for name in ("trials.parquet", "report.md"):
        (tracked.sweep_dir / name).unlink()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "maskdm-sweep"), "report", str(tracked.sweep_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (tracked.sweep_dir / "trials.parquet").exists() and (tracked.sweep_dir / "report.md").exists()
    rows = [line for line in done.stdout.splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["baseline", "patch r=0.25", "patch r=0.5"]
    assert f"maskdm-sweep ui {tracked.sweep_dir}" in done.stdout
    assert str(tracked.sweep_dir / "plots" / "fid_vs_mask_rate.png") in done.stdout


# ---- the MLflow UI in a real browser -------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# where the screenshots stay after the run (git-ignored)
SCREENSHOTS = Path(os.environ.get("MASKDM_TEST_OUTPUT", Path(__file__).parents[1] / "test-output")) / "mlflow-ui"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ui_url(tracked, tmp_path):
    """``maskdm-sweep ui <sweep dir> --port P`` running; yields the URL it prints for the sweep's runs."""
    port = _free_port()
    log = tmp_path / "ui.log"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "maskdm-sweep"), "ui", str(tracked.sweep_dir), "--port", str(port)],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, f"the UI did not come up: {log.read_text()}"
            time.sleep(0.5)
        printed = re.search(
            rf"the runs of sweep {tracked.spec.name}: (http://127\.0\.0\.1:{port}/\S+)", log.read_text()
        )
        assert printed, log.read_text()  # the command prints where the sweep's runs are
        yield printed.group(1)
    finally:
        proc.terminate()  # SIGTERM to `maskdm-sweep ui` alone: it stops its server and waits for it
        assert proc.wait(timeout=60) == 0
        with pytest.raises(OSError):  # nothing is left listening
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("MASKDM_REQUIRE_BROWSER"):
            pytest.fail("chromium and chromedriver are required (make test installs Debian's chromium)")
        pytest.skip("no chromium/chromedriver on PATH (make test installs them with apt-get when it can)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_mlflow_ui_shows_the_sweep_with_nested_runs_and_fid(tracked, ui_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    c, runs = runs_of(tracked)
    parent = next(r for r in runs if r.data.tags.get("kind") == "sweep")
    children = {r.info.run_name: r for r in runs if r is not parent}
    # readable names: the arm and the seed, or the pre-training's settings; the hashes live in the tags
    for name, run in children.items():
        hashes = [run.data.tags["trial_id"], run.data.tags.get("pretrain_key") or run.data.tags["trial_id"]]
        assert not any(h in name for h in hashes), name
        assert name.startswith("pretrain ") or name.endswith(f" · s{run.data.tags['seed']}"), name
    wait = WebDriverWait(browser, 90)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    # 0. The sweep's experiment is marked as model training, and the printed URL is its runs page in the UI's
    # model-training view (the bare address opens on MLflow's GenAI overview instead).
    assert c.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert ui_url.endswith(f"/#/experiments/{parent.info.experiment_id}/runs?workflowType=machine_learning")

    # 1. Where the printed URL lands, the runs table lists the parent alone; its expander shows every child under it.
    browser.get(ui_url)

    def run_links() -> list[str]:
        return [a.text for a in browser.find_elements(By.CSS_SELECTOR, "a[href*='/runs/']") if a.text]

    wait.until(lambda _: parent.info.run_name in run_links())
    assert f"#/experiments/{parent.info.experiment_id}/runs" in browser.current_url  # not sent on to an overview
    assert not set(children) & set(run_links()), "children are listed before their parent is expanded"
    expander = wait.until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, "button[data-component-id$='runnamecellrenderer.tsx_46']"))
    )
    expander.click()
    wait.until(lambda _: set(children) <= set(run_links()))
    assert run_links()[0] == parent.info.run_name and set(run_links()[1:]) == set(children)
    # names longer than the default column (about 16 characters) are cut with an ellipsis: widen the column, as a
    # reader would, and check every child's whole name is on screen
    from selenium.webdriver.common.action_chains import ActionChains

    header = next(h for h in browser.find_elements(By.CSS_SELECTOR, ".ag-header-cell") if h.text.strip() == "Run Name")
    ActionChains(browser).drag_and_drop_by_offset(
        header.find_element(By.CSS_SELECTOR, ".ag-header-cell-resize"), 160, 0
    ).perform()
    links = [a for a in browser.find_elements(By.CSS_SELECTOR, "a[href*='/runs/']") if a.text in children]
    wait.until(
        lambda _: all(
            browser.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth", a) for a in links
        )
    )
    browser.save_screenshot(str(SCREENSHOTS / "runs-nested.png"))

    # 2. A fine-tuning child: its page names the parent and shows eval/fid with the stored value.
    child = next(r for r in children.values() if r.data.tags.get("mask_rate") == "0.5")
    next(
        a for a in browser.find_elements(By.CSS_SELECTOR, "a[href*='/runs/']") if a.text == child.info.run_name
    ).click()
    wait.until(lambda _: "eval/fid" in browser.find_element(By.TAG_NAME, "body").text)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert child.info.run_id in browser.current_url
    assert parent.info.run_name in body  # "Parent run"
    fid = child.data.metrics["eval/fid"]
    lines = body.splitlines()
    shown = lines[lines.index("eval/fid") + 1]  # the metrics table: name, then value
    assert abs(float(shown) - fid) < 1e-6 * max(1.0, fid), (shown, fid)
    browser.save_screenshot(str(SCREENSHOTS / "finetune-run.png"))
