"""A stage run's state: what its checkpoints hold; how it saves, resumes, keeps milestones and loads initial weights.

:class:`StageState` is the state half of :mod:`.loop`'s stage run, a base class over the attributes it declares (the
run sets them up). Rank 0 writes every checkpoint, once every rank has compared its weights; a resume loads on every
rank the checkpoint rank 0 found; a fine-tuning starts from a pre-trained stage's weights, by their digest.
"""

from __future__ import annotations

import time
from collections.abc import Container
from pathlib import Path

import torch

from ..layout import StageRun
from ..maskdm import NoiseSchedule, UViT
from .checkpoint import (
    checkpoint_path,
    keep_state,
    load_checkpoint,
    load_latest_checkpoint,
    read_state,
    save_checkpoint,
)
from .compute import TERA, stage_flops
from .config import Stage, TrialConfig
from .ema import EMA
from .parallel import DataParallel, check_replicas
from .reporter import Reporter

CHECKPOINT_FORMAT = 1


class StageState:
    """The save, resume and milestone methods of a stage run, over the attributes below (the run sets them)."""

    config: TrialConfig
    stage: Stage
    files: StageRun
    reporter: Reporter
    parallel: DataParallel
    milestones: Container[int]
    device: torch.device
    schedule: NoiseSchedule
    model: UViT
    ema: EMA
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    data_gen: torch.Generator
    noise_gen: torch.Generator
    step: int
    fid_last: float | None
    fid_best: float | None
    loss_last: float
    wall_before: float  # seconds spent in earlier attempts of this stage
    started: float  # time.perf_counter() when this attempt started
    init_checkpoint: str  # where it started, relative to the run ("": from scratch)
    init_sha256: str | None

    def _load_initial_weights(self, path: Path) -> None:
        """Fine-tuning starts from the pre-trained online (or EMA) weights, every tensor (the EMA too), read from the
        bytes whose digest it records; nothing else is kept. Raises ``UnusableState`` naming a corrupt file."""
        state, self.init_sha256 = read_state(path, map_location=self.device)
        weights = state["model"] if self.config.finetune.init_from == "online" else state["ema"]["model"]
        self.model.load_state_dict(weights)
        self.ema.load_state_dict({"model": self.model.state_dict(), "num_updates": 0})

    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "data": self.data_gen.get_state(), "noise": self.noise_gen.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": CHECKPOINT_FORMAT,
            "stage": self.stage,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "config": self.config.model_dump(mode="json"),
            "schedule": self.schedule.state_dict(),
            "progress": {
                "fid_last": self.fid_last,
                "fid_best": self.fid_best,
                "loss_last": self.loss_last,
                "wall_seconds": self.wall_seconds(),
            },
            "init_checkpoint": self.init_checkpoint,
            "init_sha256": self.init_sha256,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.data_gen.set_state(state["rng"]["data"])
        self.noise_gen.set_state(state["rng"]["noise"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.step = int(state["step"])
        progress = state["progress"]
        self.fid_last, self.fid_best, self.loss_last = progress["fid_last"], progress["fid_best"], progress["loss_last"]
        self.wall_before = float(progress["wall_seconds"])
        self.init_sha256 = state.get("init_sha256")  # None in checkpoints from before digests

    def wall_seconds(self) -> float:
        """Wall-clock seconds of this stage over all its attempts."""
        return self.wall_before + time.perf_counter() - self.started

    def save(self) -> list[float] | None:
        """Rank 0 writes a checkpoint (and keeps it when the step is a milestone); first every rank's weights are
        compared (returns their checksums; None when alone)."""
        checksums = check_replicas(self.model, self.parallel) if self.parallel.enabled else None
        if self.parallel.is_main:
            path = save_checkpoint(
                self.state_dict(), self.files.checkpoints, self.step, keep=self.config.runtime.keep_checkpoints
            )
            if self.step in self.milestones:
                self._keep_milestone(path)
            self.reporter.checkpoint(self.step, path)
        return checksums

    def _keep_milestone(self, checkpoint: Path) -> None:
        """The state at this step, out of the rotation: a copy of the checkpoint, checked against its digest as it
        is copied, with its record (its digest and what reaching it cost; a milestone counts once both exist)."""
        train, evaluation = stage_flops(self.config, self.stage, self.step)
        keep_state(
            checkpoint,
            self.files.milestone(self.step),
            {
                "step": self.step,
                "wall_seconds": self.wall_seconds(),
                "train_tflops": train / TERA,
                "eval_tflops": evaluation / TERA,
                "loss": self.loss_last,
            },
        )

    def _load_resume_state(self) -> dict | None:
        """The newest readable checkpoint; every rank loads the one rank 0 found (none of them writes meanwhile)."""
        directory = self.files.checkpoints
        found = load_latest_checkpoint(directory, map_location=self.device) if self.parallel.is_main else None
        step = self.parallel.broadcast(None if found is None else int(found[0]["step"]))
        if step is None:
            return None
        return found[0] if found is not None else load_checkpoint(checkpoint_path(directory, step), self.device)
