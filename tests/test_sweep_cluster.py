"""A sweep on a real two-node Ray cluster (both nodes on this machine): trials spread over the nodes, each stage once.

The cluster is started the way docs/design.md ("Ray 2.60") describes: two ``ray start --block`` child processes
with ``RAY_AUTH_MODE=disabled``, a short ``--temp-dir`` per node, distinct ports per node; torn down with SIGTERM
(then SIGKILL) to their own process groups only (never ``ray stop``: it would stop every Ray process of the user).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from maskdm_sweeps.layout import STAGE_RESULT, SweepDir
from maskdm_sweeps.testing import tiny_sweep_spec

BIN = Path(sys.executable).parent
SWEEP = BIN / "maskdm-sweep"
RAY = BIN / "ray"


def _spec(name: str, output_dir: Path) -> str:
    """Two pre-trainings, four fine-tunings of two lengths: more trials than either node has CPUs."""
    axes = {"mask.rate": [0.25, 0.5], "finetune.steps": [30, 40]}
    return yaml.safe_dump(
        tiny_sweep_spec(
            name,
            output_dir,
            {"axes": axes},
            pretrain={"steps": 20, "batch_size": 16},
            finetune={"batch_size": 16},
            runtime={"log_every_steps": 5, "checkpoint_every_steps": 5},
        )
    )


pytestmark = pytest.mark.slow


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free right now (held open together so that they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(MASKDM_CACHE=str(cache), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    return env


def _tail(path: Path, n: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as err:
        return f"<{path}: {err}>"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _kill_group(proc: subprocess.Popen, grace: float = 40.0) -> None:
    """Stop ``proc`` and the process group it leads (start_new_session=True): SIGTERM to the leader first (a
    ``ray start --block`` then drains its node and stops its own processes: about 2 s), then SIGTERM and, after
    a few seconds, SIGKILL to whatever is left in the group."""
    pgid = proc.pid
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if not _group_alive(pgid):
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


NODES_PROBE = textwrap.dedent("""
    import sys, ray
    ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False, configure_logging=False)
    print("ALIVE", sum(1 for n in ray.nodes() if n["Alive"]))
    ray.shutdown()
""")


class Cluster:
    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        ports = _free_ports(13)
        self.port = ports[0]
        self.address = f"127.0.0.1:{self.port}"
        self.node_ports = [ports[1:7], ports[7:13]]

    def _start(self, name: str, args: list[str], ports: list[int]) -> None:
        temp = self.root / name
        temp.mkdir()
        nm, om, agent, agent_grpc, rt_env, metrics = ports
        cmd = [
            str(RAY),
            "start",
            *args,
            "--num-cpus=1",
            "--block",
            f"--temp-dir={temp}",
            "--node-ip-address=127.0.0.1",
            f"--node-manager-port={nm}",
            f"--object-manager-port={om}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={rt_env}",
            f"--metrics-export-port={metrics}",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
        ]
        log = self.root / f"{name}.log"
        self.logs.append(log)
        with open(log, "w") as out:
            self.procs.append(
                subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
            )

    def start(self, timeout: float = 180.0) -> None:
        # (no --ray-client-server-port: without ray[client] installed, passing it is refused)
        self._start("h", ["--head", f"--port={self.port}", "--include-dashboard=false"], self.node_ports[0])
        self._wait_nodes(1, timeout)
        self._start("w", [f"--address={self.address}"], self.node_ports[1])
        self._wait_nodes(2, timeout)

    def _wait_nodes(self, n: int, timeout: float) -> None:
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            for proc, log in zip(self.procs, self.logs, strict=True):
                assert proc.poll() is None, f"`ray start` exited with {proc.returncode}:\n{_tail(log)}"
            try:
                out = subprocess.run(
                    [sys.executable, "-c", NODES_PROBE, self.address],
                    env=self.env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                last = out.stdout[-2000:] + out.stderr[-2000:]
                alive = [int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("ALIVE ")]
                if alive and alive[-1] >= n:
                    return
            except subprocess.TimeoutExpired as err:
                last = f"probe timed out: {err}"
            time.sleep(2)
        logs = "\n".join(f"--- {log.name}\n{_tail(log, 3000)}" for log in self.logs)
        raise AssertionError(
            f"the Ray cluster did not reach {n} alive nodes in {timeout:.0f} s; last probe:\n{last}\n{logs}"
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):  # the worker node first, then the head
            t0 = time.monotonic()
            _kill_group(proc)
            print(f"stopped `{' '.join(proc.args[1:3])}` (exit {proc.returncode}) in {time.monotonic() - t0:.1f} s")


@pytest.fixture
def cluster(tmp_path):
    # Socket paths (<temp dir>/session_*/sockets/...) must stay under 107 bytes: a short root, not tmp_path.
    root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    c = Cluster(root, _env(tmp_path / "cache"))
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def _run_driver(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int | None, str]:
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc, grace=10)
            code = None
    return code, _tail(log)


def test_sweep_runs_on_a_two_node_cluster_and_spreads_over_both_nodes(tmp_path, cluster):
    spec = tmp_path / "spec.yaml"
    out_dir = tmp_path / "out"
    spec.write_text(_spec("cluster-smoke", out_dir))
    code, output = _run_driver(
        [str(SWEEP), "run", str(spec), "--set", f"output_dir={out_dir}", "--address", cluster.address],
        _env(tmp_path / "cache"),
        tmp_path / "driver.log",
        timeout=400,
    )
    assert code == 0, f"maskdm-sweep run exited with {code}; output tail:\n{output}"

    sweep = SweepDir(out_dir, "cluster-smoke")
    plan = json.loads(sweep.plan_file.read_text())
    trial_ids = {t["trial_id"] for t in plan["trials"]}
    pretrain_keys = set(plan["pretrains"])
    assert len(trial_ids) == 4 and len(pretrain_keys) == 2, plan

    events_path = sweep.events
    events = [json.loads(line) for line in events_path.read_text().splitlines() if line.strip()]
    done = [e for e in events if e["event"] == "stage_done"]
    context = f"events:\n{events_path.read_text()[-6000:]}\ndriver output tail:\n{output}"

    finetunes = Counter(e["key"] for e in done if e["stage"] == "finetune")
    pretrains = Counter(e["key"] for e in done if e["stage"] == "pretrain")
    assert finetunes == Counter(trial_ids), f"each of the 4 fine-tunings must finish exactly once\n{context}"
    assert pretrains == Counter(pretrain_keys), f"each of the 2 pre-trainings must finish exactly once\n{context}"
    starts = Counter((e["stage"], e["key"]) for e in events if e["event"] == "stage_start")
    assert all(n == 1 for n in starts.values()), f"a stage run started more than once: {starts}\n{context}"

    for t in trial_ids:
        result = sweep.finetune(t).result
        assert result.exists(), f"{result} is missing\n{context}"
    for key in pretrain_keys:
        assert sweep.pretrain(key).result.exists(), f"pre-training {key} has no {STAGE_RESULT}"

    steps = {e["key"]: e["steps"] for e in done if e["stage"] == "finetune"}
    by_trial = {t["trial_id"]: t["assignments"]["finetune.steps"] for t in plan["trials"]}
    assert steps == by_trial, f"fine-tunings stopped at the wrong step: {steps} vs planned {by_trial}"

    nodes = {e.get("node_id") for e in done}
    assert None not in nodes and "" not in nodes, f"a stage_done event has no node_id\n{context}"
    assert len(nodes) >= 2, (
        f"all {len(done)} stage runs ran on one node ({nodes}); a two-node cluster with one "
        f"CPU per node and one CPU per trial must use both\n{context}"
    )
