"""Data-parallel training inside a stage run, on the CPU with gloo: the proof that gradients are averaged.

Two processes started by ``torch.multiprocessing`` (the trainer does not care who starts them; a sweep uses Ray
Train, tested in ``test_sweep_workers.py``) train the same stage as one process with the same global batch.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from maskdm_sweeps.layout import StageRun
from maskdm_sweeps.testing import TINY_NETWORK_STRATEGIES, tiny_trial_config
from maskdm_sweeps.trainer import JsonlReporter, fit, load_latest_checkpoint, read_jsonl_metrics
from maskdm_sweeps.trainer.config import TrialConfig
from maskdm_sweeps.trainer.parallel import BatchDoesNotDivide, DataParallel, ReplicasDiverged, check_replicas

STEPS = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join_group(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _train_rank(rank: int, world: int, port: int, config_json: str, workdirs: list[str], reports: str) -> None:
    """One rank of a stage run in ``workdirs[rank]``; what the rank reports and returns goes to ``reports``."""
    _join_group(rank, world, port)
    try:
        config = TrialConfig.model_validate_json(config_json)
        reporter = JsonlReporter(Path(reports) / f"metrics-rank{rank}.jsonl")
        result = fit(config, "pretrain", Path(workdirs[rank]), reporter)
        (Path(reports) / f"result-rank{rank}.json").write_text(json.dumps(result.to_json()))
    finally:
        dist.destroy_process_group()


def _check_perturbed_replicas(rank: int, world: int, port: int, out: str) -> None:
    _join_group(rank, world, port)
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 4)
        with torch.no_grad():
            model.weight[0, 0] += 1e-3 * rank  # rank 1 holds other weights, as without gradient averaging
        try:
            check_replicas(model, DataParallel.from_process_group())
            verdict = "in sync"
        except ReplicasDiverged as err:
            verdict = f"diverged: {err}"
        Path(out, f"rank{rank}.txt").write_text(verdict)
    finally:
        dist.destroy_process_group()


def _config():
    # masked pre-training: data indices, flips, timesteps, noise and masks are all split by rows
    return tiny_trial_config(
        data={"name": "digits", "image_size": 8, "hflip": True},
        mask={"strategy": "patch", "rate": 0.5},
        pretrain={"steps": STEPS, "batch_size": 32, "lr": 2e-3, "grad_clip": 1.0},
        ema={"warmup": False, "decay": 0.9},
        runtime={"device": "cpu", "log_every_steps": 3, "checkpoint_every_steps": 6},
    )


@pytest.fixture(scope="module")
def one_and_two_workers(tmp_path_factory):
    """``(one, two)``: the stage dir of one worker, and a folder holding the two ranks' stage dirs ``rank0`` and
    ``rank1`` and what each rank reported and returned (``metrics-rank<r>.jsonl``, ``result-rank<r>.json``).

    The ranks train in stage dirs of their own (on one machine a sweep gives them the same one), so that whatever
    rank 1 writes is seen.
    """
    config = _config()
    one = tmp_path_factory.mktemp("one-worker")
    torch.set_num_threads(1)
    fit(config, "pretrain", one, JsonlReporter(one / "metrics.jsonl"))
    two = tmp_path_factory.mktemp("two-workers")
    workdirs = [str(two / f"rank{r}") for r in (0, 1)]
    mp.start_processes(
        _train_rank,
        args=(2, _free_port(), config.model_dump_json(), workdirs, str(two)),
        nprocs=2,
        start_method="spawn",
        join=True,
    )
    return one, two


def test_two_gloo_workers_train_the_weights_of_one_worker_with_the_same_global_batch(one_and_two_workers):
    one, two = one_and_two_workers
    (state1, path1), (state2, path2) = (load_latest_checkpoint(d / "checkpoints") for d in (one, two / "rank0"))
    assert path1.name == path2.name == f"step_{STEPS:09d}.pt"
    for name in ("model", "ema"):
        w1 = state1[name] if name == "model" else state1["ema"]["model"]
        w2 = state2[name] if name == "model" else state2["ema"]["model"]
        for key in w1:
            torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=2e-5, msg=f"{name}.{key}")
    # the weights moved (EMA lags the online weights): equal checkpoints are not two untouched initialisations
    first_key = next(iter(state1["model"]))
    assert not torch.equal(state1["model"][first_key], state1["ema"]["model"][first_key])
    # the reported loss is the global batch's loss, the same as one worker's
    losses1 = [v["train/loss"] for _, v in read_jsonl_metrics(one / "metrics.jsonl")]
    losses2 = [v["train/loss"] for _, v in read_jsonl_metrics(two / "metrics-rank0.jsonl")]
    assert len(losses1) == len(losses2) == STEPS // 3
    assert losses2 == pytest.approx(losses1, rel=1e-4)


def test_both_ranks_hold_identical_weights_and_only_rank_0_writes(one_and_two_workers):
    _, two = one_and_two_workers
    results = [json.loads((two / f"result-rank{r}.json").read_text()) for r in (0, 1)]
    for result in results:
        assert result["workers"] == 2
        checksums = result["replica_checksums"]
        assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert results[0]["loss_final"] == results[1]["loss_final"]
    # rank 0 writes the stage's files: config, checkpoints, result; rank 1 writes nothing at all
    rank0, rank1 = two / "rank0", two / "rank1"
    written = json.loads((rank0 / "result.json").read_text())
    assert StageRun(rank0).result_checkpoint(written) == Path(results[0]["checkpoint"])  # relative to the run
    assert {**written, "checkpoint": results[0]["checkpoint"]} == results[0]
    assert written["workers"] == 2 and written["steps"] == STEPS
    assert json.loads((rank0 / "config.json").read_text()) == _config().model_dump(mode="json")
    assert sorted(p.name for p in (rank0 / "checkpoints").glob("step_*.pt")) == [
        f"step_{s:09d}.pt" for s in range(6, STEPS + 1, 6)
    ]
    assert not rank1.exists() or not [p for p in rank1.rglob("*") if p.is_file()], sorted(rank1.rglob("*"))
    params = [
        v for v in map(json.loads, (two / "metrics-rank0.jsonl").read_text().splitlines()) if v["kind"] == "params"
    ]
    assert params[0]["values"]["workers"] == 2 and params[0]["values"]["batch_per_worker"] == 16
    # every rank reports the same metrics at the same steps (ray.train.report is a barrier); only clocks differ
    reported = [read_jsonl_metrics(two / f"metrics-rank{r}.jsonl") for r in (0, 1)]
    assert [(step, sorted(v)) for step, v in reported[1]] == [(step, sorted(v)) for step, v in reported[0]]
    clocks = {"train/images_per_second"}
    assert [{k: x for k, x in v.items() if k not in clocks} for _, v in reported[1]] == [
        {k: x for k, x in v.items() if k not in clocks} for _, v in reported[0]
    ]


def test_replica_check_catches_ranks_whose_weights_differ(tmp_path):
    mp.start_processes(
        _check_perturbed_replicas, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn", join=True
    )
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text().startswith("diverged: the ranks' weights differ")


def test_a_global_batch_that_does_not_split_over_the_workers_is_an_error():
    with pytest.raises(BatchDoesNotDivide, match=r"pretrain\.batch_size 30 does not split evenly over 4 workers"):
        DataParallel(rank=1, world_size=4).rows(30, "pretrain.batch_size")
    assert DataParallel(rank=1, world_size=4).rows(32) == slice(8, 16)
    assert DataParallel().rows(30) == slice(0, 30)


def _train_both_stages(rank: int, world: int, port: int, config_json: str, workdir: str) -> None:
    """Pre-training, then fine-tuning from its checkpoint, on every rank; rank 0 writes ``results.json``."""
    _join_group(rank, world, port)
    try:
        config = TrialConfig.model_validate_json(config_json)
        pre = fit(config, "pretrain", Path(workdir) / f"pre{rank}")
        dist.barrier()  # rank 0 alone writes the checkpoint every rank starts fine-tuning from
        start = Path(workdir) / "pre0" / Path(pre.checkpoint).relative_to(Path(workdir) / f"pre{rank}")
        ft = fit(config, "finetune", Path(workdir) / f"ft{rank}", init_checkpoint=start)
        if rank == 0:
            Path(workdir, "results.json").write_text(json.dumps([pre.to_json(), ft.to_json()]))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "mask",
    TINY_NETWORK_STRATEGIES,
    ids=[section["strategy"] for section in TINY_NETWORK_STRATEGIES],
)
def test_each_masking_strategy_trains_both_stages_on_two_workers_in_sync(mask, tmp_path):
    # a MaskDiT decoder's mask token is unused once nothing is masked: DDP still needs its gradient every step
    config = tiny_trial_config(
        mask=mask,
        pretrain={"steps": 4, "batch_size": 16},
        finetune={"steps": 4, "batch_size": 16},
        runtime={"device": "cpu", "log_every_steps": 2, "checkpoint_every_steps": 4},
    )
    mp.start_processes(
        _train_both_stages,
        args=(2, _free_port(), config.model_dump_json(), str(tmp_path)),
        nprocs=2,
        start_method="spawn",
        join=True,
    )
    for result in json.loads((tmp_path / "results.json").read_text()):
        assert result["workers"] == 2 and result["steps"] == 4
        assert len(set(result["replica_checksums"])) == 1  # both ranks hold the same weights
