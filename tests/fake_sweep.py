"""A finished sweep's files, written by hand in the formats a sweep writes (no training, no Ray, no MLflow)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from maskdm_sweeps.layout import TRIALS_DIR, SweepDir
from maskdm_sweeps.sweepspec.identity import trial_label

DESCRIPTION = "FID after fine-tuning, by the patch-masking rate of pre-training, against the baseline."
PRE_STEPS, FT_STEPS = 30, 40
FT_TFLOPS_PER_STEP = 1.0  # training compute of a fine-tuning step; a pre-training step costs 1 - its mask rate
BASE: dict[str, Any] = {
    "seed": 0,
    "data": {
        "name": "digits",
        "path": None,
        "image_size": 16,
        "split": "train",
        "crop": "center",
        "fraction": 1.0,
        "max_images": None,
        "subset_seed": 0,
        "hflip": False,
        "download": False,
    },
    "model": {"preset": "tiny", "patch_size": 1, "time_mlp": False, "final_conv": False},
    "diffusion": {"schedule": "linear", "num_timesteps": 1000},
    "mask": {"strategy": "patch", "rate": 0.9},
    "pretrain": {
        "steps": PRE_STEPS,
        "batch_size": 32,
        "lr": 2e-4,
        "warmup_steps": 0,
        "grad_clip": None,
        "betas": [0.99, 0.99],
        "weight_decay": 0.03,
    },
    "finetune": {
        "steps": FT_STEPS,
        "batch_size": 32,
        "lr": 2e-4,
        "warmup_steps": 0,
        "grad_clip": None,
        "betas": [0.99, 0.99],
        "weight_decay": 0.03,
        "init_from": "online",
        "data": None,
    },
    "ema": {"decay": 0.999, "warmup": True},
    "eval": {
        "every_steps": 20,
        "stages": ["finetune"],
        "num_samples": 64,
        "batch_size": 64,
        "sampler": "ddim",
        "sampling_steps": 10,
        "eta": 1.0,
        "weights": "ema",
        "backend": "digits-classifier",
        "fid_weights": None,
        "grid_size": 16,
    },
    "runtime": {
        "device": "cpu",
        "precision": "auto",
        "compile": False,
        "log_every_steps": 10,
        "checkpoint_every_steps": 10,
        "keep_checkpoints": 2,
    },
}


# ------------------------------------------------------------------------------------------------ the fake sweep
def _set(data: dict, dotted: str, value) -> None:
    *head, last = dotted.split(".")
    for part in head:
        data = data[part]
    data[last] = value


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _pretrain_key(cfg: dict) -> str:
    return _hash({k: v for k, v in cfg.items() if k not in ("finetune", "eval", "runtime")})


def _jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def fid_of(rate: float | None, seed: int, lr: float = 2e-4) -> float:
    """The final FID the fake trial reports (baseline: rate None)."""
    base = 60.0 if rate is None else 50.0 + 10.0 * (rate - 0.5) ** 2 * 4
    return base + 1.7 * seed + (lr - 2e-4) * 1e4


def _train_records(steps: int, rate: float, loss0: float, t0: float) -> list[dict]:
    out = []
    for step in range(10, steps + 1, 10):
        out.append(
            {
                "time": t0 + step,
                "step": step,
                "kind": "metrics",
                "values": {
                    "train/loss": loss0 / (1 + step / 20),
                    "train/grad_norm": 1.0,
                    "train/lr": 2e-4,
                    "train/images_per_second": 50.0,
                    "train/effective_mask_rate": rate,
                },
            }
        )
    return out


def build_sweep(
    root: Path,
    name: str = "fake",
    rates=(0.5, 0.9),
    seeds=(0, 1),
    baseline: bool = True,
    lrs=None,
    gpus: float = 1.0,
    method: str = "grid",
    pre_wall: float = 100.0,
    ft_wall: float = 50.0,
    no_result: tuple = (),
    error_for: tuple = (),
    mlflow_for: tuple = (),
    dup_step: bool = True,
) -> dict:
    """Write ``<root>/<name>/`` and ``<root>/_pretrain/`` as a finished sweep would; returns what was written.

    ``lrs``: a finetune.lr axis (then each pre-training feeds one trial per lr). ``no_result``: (rate, seed[, lr])
    points left without result.json; ``error_for``: those with a Tune error.txt too.
    """
    layout = SweepDir(root, name)
    sweep = layout.path
    (sweep / TRIALS_DIR).mkdir(parents=True)
    axes = {"mask.rate": list(rates)}
    if lrs:
        axes["finetune.lr"] = list(lrs)
    spec = {
        "name": name,
        "description": DESCRIPTION,
        "output_dir": str(root),
        "base": BASE,
        "sweep": {
            "axes": axes,
            "zip": {},
            "seeds": list(seeds),
            "baseline": baseline,
            "search": {"method": method, "num_samples": 1, "seed": 0, "metric": "eval/fid", "mode": "min", "space": {}},
            "scheduler": {
                "type": "none",
                "metric": "eval/fid",
                "mode": "min",
                "grace_period": 100,
                "reduction_factor": 2.0,
            },
        },
        "resources": {"gpus": gpus, "cpus": 1.0, "max_concurrent_trials": 0, "max_failures": 2},
        "tracking": {"mlflow_uri": None, "experiment": None},
    }
    layout.resolved_spec.write_text(
        f"# resolved spec of sweep {name} (hash abc)\n" + yaml.safe_dump(spec, sort_keys=False)
    )
    points = [
        {"mask.rate": r, **({"finetune.lr": lr} if lrs else {}), "seed": s}
        for r in rates
        for lr in (lrs or [None])
        for s in seeds
    ]
    if baseline:
        points += [
            {"baseline": True, **({"finetune.lr": lr} if lrs else {}), "seed": s}
            for lr in (lrs or [None])
            for s in seeds
        ]
    trials, events = [], [{"time": 0.0, "event": "invocation", "number": 1, "resume": False}]
    pretrains: dict[str, dict[str, Any]] = {}
    written: dict[str, Any] = {"trials": {}, "pretrains": {}}
    for i, point in enumerate(points):
        cfg = copy.deepcopy(BASE)
        for k, v in point.items():
            if k != "baseline":
                _set(cfg, k, v)
        is_base = point.get("baseline", False)
        if is_base:
            cfg["pretrain"]["steps"] = 0
        key = None if is_base else _pretrain_key(cfg)
        tid = "t-" + _hash(cfg)[:10]
        rate: Any = None if is_base else point["mask.rate"]  # set whenever key is
        lr = point.get("finetune.lr", 2e-4)
        ident = (rate, point["seed"], lr) if lrs else (rate, point["seed"])
        label = trial_label(point)  # the label the planner gives it
        trials.append({"trial_id": tid, "label": label, "assignments": point, "pretrain_key": key})
        if key is not None and key not in pretrains:
            eff = int(rate * 256) / 256  # the tiny model's 16x16 grid floors the patch count
            run = layout.pretrain(key)
            pre = run.path
            pre.mkdir(parents=True)
            run.config.write_text(json.dumps(cfg, indent=2))
            _jsonl(
                run.metrics,
                [
                    {
                        "time": 1.0,
                        "step": 0,
                        "kind": "params",
                        "values": {"effective_mask_rate": eff, "stage": "pretrain"},
                    }
                ]
                + _train_records(PRE_STEPS, eff, 0.6, 1.0),
            )
            run.result.write_text(
                json.dumps(
                    {
                        "stage": "pretrain",
                        "steps": PRE_STEPS,
                        "loss_final": 0.5,
                        "fid": None,
                        "fid_best": None,
                        "effective_mask_rate": eff,
                        "wall_seconds": pre_wall,
                        "checkpoint": str(pre / "c.pt"),
                        "stopped_early": False,
                        "train_tflops": PRE_STEPS * (1 - eff),
                        "eval_tflops": 0.0,
                    }
                )
            )
            run.milestones.mkdir()  # the one length asked of it, kept with what reaching it cost
            run.milestone(PRE_STEPS).write_bytes(b"state")
            run.milestone_info(PRE_STEPS).write_text(
                json.dumps(
                    {
                        "step": PRE_STEPS,
                        "wall_seconds": pre_wall,
                        "train_tflops": PRE_STEPS * (1 - eff),
                        "eval_tflops": 0.0,
                        "loss": 0.5,
                    }
                )
            )
            events += [
                {
                    "time": 1.0,
                    "event": "stage_start",
                    "stage": "pretrain",
                    "trial_id": tid,
                    "key": key,
                    "from_step": 0,
                    "pid": 1,
                },
                {
                    "time": 2.0,
                    "event": "stage_done",
                    "stage": "pretrain",
                    "trial_id": tid,
                    "key": key,
                    "steps": PRE_STEPS,
                    "fid": None,
                    "node_id": "n",
                    "stopped_early": False,
                },
            ]
            pretrains[key] = {"trial_ids": [], "reused": False}
            written["pretrains"][key] = {"effective_mask_rate": eff}
        if key is not None:
            pretrains[key]["trial_ids"].append(tid)

        stage = layout.finetune(tid)
        ft = stage.path
        ft.mkdir(parents=True)
        stage.config.write_text(json.dumps(cfg, indent=2))
        gpus_billed = max(1.0, gpus) if gpus > 0 else 0.0
        layout.manifest(tid).write_text(
            json.dumps(
                {  # the manifest, as a starting trial writes it
                    "trial_id": tid,
                    "label": label,
                    "assignments": point,
                    "pretrain_key": key,
                    "effective_mask_rate": 0.0 if key is None else int(rate * 256) / 256,
                    "resources": {
                        "device": "gpu" if gpus > 0 else "cpu",
                        "workers": 1,
                        "gpus_billed": gpus_billed,
                        "devices_billed": gpus_billed if gpus > 0 else 1.0,
                    },
                    "config": cfg,
                }
            )
        )
        fid = fid_of(rate, point["seed"], lr)
        finished = ident not in no_result
        records = [
            {
                "time": 10.0,
                "step": 0,
                "kind": "params",
                "values": {
                    "effective_mask_rate": 0.0,
                    "stage": "finetune",
                    "fid_num_samples": 64,
                    "fid_backend": "digits-classifier",
                    "fid_reference": "digits:0123",
                },
            }
        ]
        records += _train_records(FT_STEPS if finished else 20, 0.0, 0.5, 10.0)
        records.append(
            {
                "time": 30.0,
                "step": 20,
                "kind": "metrics",
                "values": {
                    "eval/fid": fid + 5,
                    "eval/fid_best": fid + 5,
                    "cost/train_tflops": 20 * FT_TFLOPS_PER_STEP,
                    "cost/eval_tflops": 0.5,
                },
            }
        )
        records.append({"time": 30.5, "step": 20, "kind": "artifact", "path": str(stage.samples / "step_20.png")})
        if finished:
            records.append(
                {"time": 50.0, "step": 40, "kind": "metrics", "values": {"eval/fid": fid, "eval/fid_best": fid}}
            )
            records.append({"time": 50.5, "step": 40, "kind": "checkpoint", "path": str(ft / "c.pt")})
        if dup_step and i == 0:  # a resumed stage appends: step 20 again, the later record wins
            records.append({"time": 60.0, "step": 20, "kind": "metrics", "values": {"train/loss": 0.123}})
        _jsonl(stage.metrics, records)
        events.append(
            {
                "time": 3.0,
                "event": "stage_start",
                "stage": "finetune",
                "trial_id": tid,
                "key": tid,
                "from_step": 0,
                "pid": 2,
            }
        )
        if finished:
            stage.result.write_text(
                json.dumps(
                    {
                        "stage": "finetune",
                        "steps": FT_STEPS,
                        "loss_final": 0.25,
                        "fid": fid,
                        "fid_best": fid,
                        "effective_mask_rate": 0.0,
                        "wall_seconds": ft_wall,
                        "checkpoint": str(ft / "c.pt"),
                        "stopped_early": False,
                        "train_tflops": FT_STEPS * FT_TFLOPS_PER_STEP,
                        "eval_tflops": 1.0,
                    }
                )
            )
            events.append(
                {
                    "time": 4.0,
                    "event": "stage_done",
                    "stage": "finetune",
                    "trial_id": tid,
                    "key": tid,
                    "steps": FT_STEPS,
                    "fid": fid,
                    "node_id": "n",
                    "stopped_early": False,
                }
            )
        if ident in error_for:
            err = layout.tune / "trials-1" / f"trial_trainable_{i:05d}"
            err.mkdir(parents=True)
            (err / "params.json").write_text(json.dumps({"trial_id": tid}))
            (err / "error.txt").write_text("Traceback ...\nRuntimeError: CUDA error: out of memory\n")
        if ident in mlflow_for:
            stage.mlflow_run.write_text(json.dumps({"run_id": f"run{i:03d}"}))
        written["trials"][tid] = {
            "rate": rate,
            "seed": point["seed"],
            "lr": lr,
            "fid": fid,
            "finished": finished,
            "pretrain_key": key,
            "dup": dup_step and i == 0,
        }
    plan = {"sweep": name, "spec_hash": "abc", "trials": trials, "pretrains": pretrains}
    layout.plan_file.write_text(json.dumps(plan, indent=2))
    _jsonl(layout.events, events)
    written["dir"] = sweep
    return written
