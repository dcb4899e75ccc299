"""``maskdm-sweep ui``: the MLflow UI of a results store, its sweeps marked as model training, and the address of a
sweep's runs (opened in a browser on request).

MLflow 3.17's UI opens on its GenAI overview (traces, tokens) and keeps a sweep's parent and nested runs a few clicks
away; the runs page of the sweep's experiment, in the UI's machine-learning view, lists them at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import webbrowser
from pathlib import Path

from .store import client, mark_model_training

HOST = "127.0.0.1"
SWEEP_RUN_FILTER = "tags.kind = 'sweep'"  # the parent run of every run/resume invocation carries it
WORKFLOW = "workflowType=machine_learning"  # the UI's view for model training (its default view is GenAI)


def sweep_experiments(uri: str, results_root: Path) -> dict[str, str]:
    """Name -> id of every experiment of the store that holds a sweep's parent run."""
    c = client(uri, results_root)
    found = {}
    for experiment in c.search_experiments():
        if c.search_runs([experiment.experiment_id], filter_string=SWEEP_RUN_FILTER, max_results=1):
            found[experiment.name] = experiment.experiment_id
    return found


def mark_sweeps_as_training(uri: str, results_root: Path) -> dict[str, str]:
    """Tag every sweep experiment of the store as model training (sweeps made before the tag existed have none);
    returns :func:`sweep_experiments`."""
    experiments = sweep_experiments(uri, results_root)
    c = client(uri, results_root)
    for experiment_id in experiments.values():
        mark_model_training(c, experiment_id)
    return experiments


def ui_address(port: int) -> str:
    return f"http://{HOST}:{port}"


def runs_page(port: int, experiment_id: str | None) -> str:
    """The URL of an experiment's runs (a sweep's parent runs, their children under each one's expander), or of
    the list of experiments when ``experiment_id`` is None."""
    where = f"experiments/{experiment_id}/runs" if experiment_id is not None else "experiments"
    return f"{ui_address(port)}/#/{where}?{WORKFLOW}"


def start_server(uri: str, port: int) -> subprocess.Popen:
    """``mlflow ui`` on ``uri`` in a session of its own: one worker and no job runner (two processes and about
    0.5 GB instead of fifteen and about 3 GB)."""
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def wait_until_up(server: subprocess.Popen, port: int, timeout: float = 300.0) -> bool:
    """Poll the server's ``/health`` until it answers (True) or the server exits or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while server.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{ui_address(port)}/health", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def open_in_browser(url: str) -> str | None:
    """Open ``url`` in the user's browser (``$BROWSER`` or what Python's ``webbrowser`` finds); None when it did,
    else why not."""
    try:
        return None if webbrowser.get().open(url) else "the browser did not start"
    except webbrowser.Error:
        return "no browser found (set BROWSER to use one)"


def serve(server: subprocess.Popen, port: int, open_url: str | None = None) -> int:
    """Wait for the UI server, opening ``open_url`` in a browser once it answers; SIGTERM or SIGINT to this process
    is passed on to the server's whole process group (mlflow ui runs a uvicorn child), and we wait for it to end:
    nothing is left listening. Exit 0 when stopped."""
    stopping = []

    def stop(signum, frame) -> None:
        stopping.append(signum)
        try:
            os.killpg(server.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:  # the handlers come first: a stop while the server starts must reach it too
        if open_url:
            why_not = open_in_browser(open_url) if wait_until_up(server, port) else "the UI did not answer"
            print(f"  opened {open_url} in a browser" if why_not is None else f"  not opened: {why_not}", flush=True)
        while True:
            try:
                code = server.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:  # keep waiting (signals run their handler meanwhile)
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if stopping else code
