"""The console script as a user calls it."""

import subprocess
import sys
from pathlib import Path

import pytest

import maskdm_sweeps

SCRIPT = Path(sys.executable).with_name("maskdm-sweep")


def run(*args):
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True)


def test_help_lists_the_subcommands():
    out = run("--help")
    assert out.returncode == 0
    assert "version" in out.stdout and "train" in out.stdout


def test_version_subcommand_prints_the_package_version():
    out = run("version")
    assert out.returncode == 0
    assert out.stdout.startswith(f"maskdm-sweeps {maskdm_sweeps.__version__}")


def test_unknown_subcommand_exits_with_usage_error():
    out = run("frobnicate")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


# ---- maskdm-sweep ui ------------------------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _store_with_sweeps(root: Path) -> dict[str, str]:
    """A results store as sweeps made before they tagged their experiments: ``old`` (no kind), ``chosen`` (a kind
    someone picked in the UI), both with a sweep's parent run, and ``scratch`` (no sweep run)."""
    from mlflow import MlflowClient

    from maskdm_sweeps.tracking import default_tracking_uri

    root.mkdir(parents=True)
    c = MlflowClient(default_tracking_uri(root))
    ids = {name: c.create_experiment(name) for name in ("old", "chosen", "scratch")}
    c.set_experiment_tag(ids["chosen"], "mlflow.experimentKind", "finetuning")
    for name in ("old", "chosen"):
        c.create_run(ids[name], run_name=f"{name} #1", tags={"kind": "sweep", "sweep": name})
    return ids


@pytest.mark.slow  # starts the MLflow UI server: a minute on a busy 2-core machine
def test_ui_marks_earlier_sweeps_as_model_training_and_opens_where_their_runs_are(tmp_path):
    import os
    import time

    from mlflow import MlflowClient

    from maskdm_sweeps.tracking import default_tracking_uri

    root, opened, port = tmp_path / "results", tmp_path / "opened.txt", _free_port()
    ids = _store_with_sweeps(root)
    browser = tmp_path / "browser.sh"  # Python's webbrowser runs $BROWSER with the URL as its argument
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    proc = subprocess.Popen(
        [str(SCRIPT), "ui", str(root), "--port", str(port), "--open"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "BROWSER": str(browser)},
    )
    try:
        deadline = time.time() + 180
        while not opened.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert opened.exists(), "the browser was never started"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    # two sweeps in the store: the list of experiments, in the UI's model-training view
    url = f"http://127.0.0.1:{port}/#/experiments?workflowType=machine_learning"
    assert opened.read_text().strip() == url and f"the sweeps' experiments: {url}" in out, out
    assert f"opened {url} in a browser" in out, out
    c = MlflowClient(default_tracking_uri(root))
    kinds = {name: c.get_experiment(i).tags.get("mlflow.experimentKind") for name, i in ids.items()}
    assert kinds == {"old": "custom_model_development", "chosen": "finetuning", "scratch": None}
