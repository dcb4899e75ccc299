"""``fit``: one stage (pre-training or fine-tuning) of one trial, resumable step for step.

Every random draw comes from two explicit generators that live in the checkpoint: a CPU one for the data order and
one on the training device for timesteps, noise and masks. A stage resumed from a checkpoint therefore continues
exactly as an uninterrupted run would (on the CPU: identical losses step for step).

With a data-parallel group (``parallel``, see :mod:`.parallel`) every rank runs this same loop on its rows of the
global batch; rank 0 alone writes files and evaluates, and all ranks report the same metrics at the same steps
(a reporter may be a collective, as ``ray.train.report`` is).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Container
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data import ImageBatches, load_dataset
from ..files import write_json
from ..layout import StageRun, relative_path
from ..maskdm import UViT, build_schedule, training_loss
from .checkpoint import checkpoint_path
from .compute import TERA, stage_tflops, train_flops_per_step
from .config import Stage, TrialConfig
from .device import autocast_dtype, resolve_device
from .ema import EMA
from .evaluation import Evaluator
from .lr_schedule import learning_rate
from .parallel import DataParallel
from .reporter import NullReporter, Reporter
from .stage_state import StageState


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the stage stops with this reason."""


@dataclass
class StageResult:
    """What a finished stage run reports, also written to ``<workdir>/result.json``."""

    stage: str
    steps: int
    loss_final: float
    fid: float | None
    fid_best: float | None
    effective_mask_rate: float
    wall_seconds: float
    checkpoint: str
    stopped_early: bool = False
    workers: int = 1
    train_tflops: float = 0.0  # the stage's training compute (maskdm_sweeps.trainer.compute)
    eval_tflops: float = 0.0  # the compute of its evaluations
    replica_checksums: list[float] | None = None  # every rank's weights checksum at the end (equal: in sync)
    init_sha256: str | None = None  # the digest of the state file it started from (a fine-tuning's pre-training)

    def to_json(self) -> dict:
        return asdict(self)


def stage_seed(seed: int, stage: Stage, stream: int) -> int:
    """Distinct, reproducible seeds per (trial seed, stage, random stream)."""
    return (seed * 1_000_003 + (0 if stage == "pretrain" else 500_000) + stream) % (2**63)


def fit(
    config: TrialConfig,
    stage: Stage,
    workdir: Path,
    reporter: Reporter | None = None,
    init_checkpoint: Path | None = None,
    parallel: DataParallel | None = None,
    milestones: Container[int] = (),
) -> StageResult:
    """Run ``stage`` of the trial described by ``config`` in ``workdir``; resume if it holds a checkpoint.

    ``init_checkpoint``: for ``finetune``, the pre-training checkpoint to start from (None: the DDPM baseline), read
    when the stage starts (not when it resumes), checked against its recorded digest, which the stage reports.
    ``parallel``: this process's rank in a data-parallel group (default: the initialised ``torch.distributed``
    group, if any; else a lone process). Every rank of the group calls ``fit`` alike.
    ``milestones``: steps whose state is kept for good in ``workdir/milestones/`` (never rotated), each with what
    reaching it cost; any container (only ``step in milestones`` is asked, at each step: it may learn of new ones
    while the run trains); a run that resumes from a checkpoint older than ``config``'s length extends itself.
    """
    parallel = parallel or DataParallel.from_process_group()
    run = _StageRun(
        config, stage, Path(workdir).resolve(), reporter or NullReporter(), init_checkpoint, parallel, milestones
    )
    return run.run()


class _StageRun(StageState):
    def __init__(
        self,
        config: TrialConfig,
        stage: Stage,
        workdir: Path,
        reporter: Reporter,
        init_checkpoint,
        parallel: DataParallel,
        milestones: Container[int] = (),
    ):
        self.config, self.stage, self.workdir, self.reporter = config, stage, workdir, reporter
        self.milestones = milestones
        self.files = StageRun(workdir)
        self.parallel = parallel
        self.stage_cfg = config.pretrain if stage == "pretrain" else config.finetune
        self.rows = parallel.rows(self.stage_cfg.batch_size, f"{stage}.batch_size")  # this rank's rows of a batch
        self.device = resolve_device(config.runtime.device)
        self.amp_dtype = autocast_dtype(config.runtime.precision, self.device)
        self.schedule = build_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)
        self.abar = self.schedule.alphas_cumprod.float().to(self.device)
        self.model_cfg = config.model_config_resolved()
        self.mask = config.mask if stage == "pretrain" else None  # the strategy: its draw and its loss
        self.effective_rate = config.effective_mask_rate if stage == "pretrain" else 0.0
        if self.effective_rate == 0.0:  # every patch visible: no mask to draw, sort and gather every step
            self.mask = None

        data_cfg = config.stage_data(stage)
        data = load_dataset(data_cfg)
        self.data = data
        self.batches = ImageBatches(data.images, self.device, hflip=data_cfg.hflip)
        self.data_gen = torch.Generator().manual_seed(stage_seed(config.seed, stage, 1))
        self.noise_gen = torch.Generator(device=self.device).manual_seed(stage_seed(config.seed, stage, 2))

        torch.manual_seed(stage_seed(config.seed, stage, 0))
        self.model = UViT(self.model_cfg).to(self.device)
        self.ema = EMA(self.model, config.ema.decay, config.ema.warmup)
        s = self.stage_cfg
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self._lr(0), betas=s.betas, weight_decay=s.weight_decay, fused=True
        )  # one kernel group per step
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.graphed = config.runtime.compile and config.runtime.compile_mode == "reduce-overhead"
        ddp = parallel.wrap(self.model, self.device)  # gradients averaged over ranks; self.model stays the module
        self.train_model = (
            torch.compile(ddp, mode=config.runtime.compile_mode, dynamic=False) if config.runtime.compile else ddp
        )
        self.flops_per_step = train_flops_per_step(config, stage)  # exact and fixed: the running total is linear
        self.evaluates = stage in config.eval.stages
        self.evaluator = (
            Evaluator(config, data, self.device, self.amp_dtype) if self.evaluates and parallel.is_main else None
        )
        self.step = 0
        self.fid_last: float | None = None
        self.fid_best: float | None = None
        self.loss_last = math.nan
        self.wall_before = 0.0  # seconds spent in earlier attempts of this stage (restored from the checkpoint)
        self.started = time.perf_counter()
        self.init_path = Path(init_checkpoint) if init_checkpoint else None  # the file read (absolute or cwd's)
        # where it started, relative to the run (saved in its checkpoints; the two may move together)
        self.init_checkpoint = relative_path(init_checkpoint, workdir) if init_checkpoint else ""
        self.init_sha256: str | None = None  # known once the initial weights are read (or restored on resume)

    # ------------------------------------------------------------------------------------------ training
    def train_step(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step; returns the loss (a device scalar, no host sync) and the grad norm if clipped.

        B is the global batch and b = B / workers this rank's rows; alone, b = B. Every draw is of the global batch.
        """
        s, B, dev, rows = self.stage_cfg, self.stage_cfg.batch_size, self.device, self.rows
        if self.graphed:  # a new iteration: the previous replay's outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        x0 = self.batches.batch(B, self.data_gen, rows)  # (b, C, H, W) in [-1, 1]
        t = torch.randint(0, self.schedule.num_timesteps, (B,), generator=self.noise_gen, device=dev)[rows]  # (b,)
        noise = torch.randn((B, *x0.shape[1:]), generator=self.noise_gen, device=dev)[rows]  # (b, C, H, W)
        keep = (
            None if self.mask is None else self.mask.sample(B, self.model_cfg.grid, self.noise_gen, dev)[rows]
        )  # (b, K)
        xt = self._add_noise(x0, noise, t)  # (b, C, H, W)
        with self._autocast():  # the strategy's forward and loss (maskdm.strategies): MDSM for MaskDM's masks
            loss = training_loss(self.mask, self.train_model, xt, t, noise, keep, self.model_cfg.patch_size)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(self.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        grad_norm = None
        if s.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(self.model)
        self.step += 1
        return loss.detach(), grad_norm

    def _lr(self, step: int) -> float:
        s = self.stage_cfg
        return learning_rate(step, s.lr, s.warmup_steps, s.steps, s.lr_decay)

    def _add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``add_noise`` with the float32 table already on the device (no per-step host->device copy)."""
        abar = self.abar[t].view(-1, 1, 1, 1)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _grad_norm(self) -> float:
        norms = [p.grad.detach().float().norm() for p in self.model.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0

    def run(self) -> StageResult:
        s, rt, main = self.stage_cfg, self.config.runtime, self.parallel.is_main
        if main:
            self.workdir.mkdir(parents=True, exist_ok=True)
            write_json(self.files.config, self.config.model_dump(mode="json"))
        resumed = self._load_resume_state()
        if resumed is not None:
            self.load_state_dict(resumed)
            if self.step > s.steps:
                raise ValueError(
                    f"{self.stage}: {self.files.checkpoints} holds step {self.step}, past the "
                    f"{s.steps} steps asked for; a shorter run needs its own directory"
                )
            if main and self.step in self.milestones and self.step not in self.files.milestone_steps():
                self._keep_milestone(checkpoint_path(self.files.checkpoints, self.step))  # killed, or set aside
        else:
            if self.init_path is not None:
                self._load_initial_weights(self.init_path)
            self._report_params()
        self.started = window_start = time.perf_counter()
        window_steps = 0
        loss_sum = torch.zeros((), device=self.device)
        # the first step whose loss was not finite, kept on the device (no host sync per step), read before every
        # report, evaluation and checkpoint: a diverged model is never evaluated or saved
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        stopped = False
        checksums = None
        while self.step < s.steps:
            loss, _ = self.train_step()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), self.step, first_bad)
            loss_sum += loss
            window_steps += 1
            last = self.step == s.steps
            logs = self.step % rt.log_every_steps == 0 or last
            evaluates = self.evaluates and (last or self._periodic(self.config.eval.every_steps))
            if logs or evaluates or self._periodic(rt.checkpoint_every_steps):
                self._check_finite(first_bad)
            if logs:
                # the window's one host sync (the mean over ranks: the global batch's loss); the clock reads after it
                loss_mean = self.parallel.mean(loss_sum).item() / window_steps
                elapsed = time.perf_counter() - window_start
                self._report_train(loss_mean, window_steps * s.batch_size / max(elapsed, 1e-9))  # global images/s
                loss_sum.zero_()
                window_start, window_steps = time.perf_counter(), 0
                stopped = self.parallel.broadcast(self.reporter.should_stop()) and not last  # all ranks stop alike
            if evaluates or (self.evaluates and stopped):
                self._evaluate()  # before the save, so the checkpoint holds the FID it reports
            if self._periodic(rt.checkpoint_every_steps) or last or stopped or self.step in self.milestones:
                checksums = self.save()
            if stopped:
                break
        cost = stage_tflops(self.config, self.stage, self.step)
        result = StageResult(
            stage=self.stage,
            steps=self.step,
            loss_final=self.loss_last,
            fid=self.fid_last,
            fid_best=self.fid_best,
            effective_mask_rate=self.effective_rate,
            wall_seconds=self.wall_seconds(),
            checkpoint=str(checkpoint_path(self.files.checkpoints, self.step)),
            stopped_early=stopped,
            workers=self.parallel.world_size,
            train_tflops=cost["cost/train_tflops"],
            eval_tflops=cost["cost/eval_tflops"],
            replica_checksums=checksums,
            init_sha256=self.init_sha256,
        )
        if main:
            # last: the stage run is finished from here on; its checkpoint relative to it, so that the run can move
            write_json(
                self.files.result,
                {**result.to_json(), "checkpoint": relative_path(Path(result.checkpoint), self.files.path)},
            )
        return result

    def _check_finite(self, first_bad: torch.Tensor) -> None:
        """Raise :class:`TrainingDiverged` naming the step where the loss first became NaN or infinite (rank 0's
        view, shared: every rank stops alike)."""
        bad = self.parallel.broadcast(int(first_bad.item()))
        if bad >= 0:
            self.reporter.metrics(self.step, {"train/loss": float("nan")})
            raise TrainingDiverged(
                f"{self.stage}: the training loss became NaN or infinite at step {bad} (lr {self.stage_cfg.lr}, "
                f"precision {self.config.runtime.precision}); the stage is stopped before any evaluation or "
                "checkpoint of the diverged weights"
            )

    def _periodic(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    # ------------------------------------------------------------------------------------------ reporting
    def _report_params(self) -> None:
        params: dict[str, str | int | float] = {"effective_mask_rate": self.effective_rate, "stage": self.stage}
        if self.parallel.enabled:  # the seeds are the same on every rank: each takes its rows of one global draw
            params.update(
                {
                    "workers": self.parallel.world_size,
                    "batch_per_worker": self.rows.stop - self.rows.start,
                    "seed_data": stage_seed(self.config.seed, self.stage, 1),
                    "seed_noise_and_masks": stage_seed(self.config.seed, self.stage, 2),
                }
            )
        if self.init_sha256:  # which pre-trained state this stage started from, by the digest of its bytes
            params.update({"init_checkpoint": self.init_checkpoint, "init_sha256": self.init_sha256})
        if self.evaluator and self.evaluator.protocol:
            params.update(self.evaluator.protocol.as_params())
        self.reporter.params(params)

    def _report_train(self, loss: float, images_per_second: float) -> None:
        if not math.isfinite(loss):
            self.reporter.metrics(self.step, {"train/loss": loss})
            raise TrainingDiverged(
                f"{self.stage}: the training loss became {loss} by step {self.step} "
                f"(lr {self.stage_cfg.lr}, precision {self.config.runtime.precision}); the stage is stopped"
            )
        self.loss_last = loss
        self.reporter.metrics(
            self.step,
            {
                "train/loss": loss,
                "train/grad_norm": self._grad_norm(),
                "train/lr": self.optimizer.param_groups[0]["lr"],
                "train/images_per_second": images_per_second,
                "train/effective_mask_rate": self.effective_rate,
                "cost/train_tflops": self.step * self.flops_per_step / TERA,
            },
        )

    def _evaluate(self) -> None:
        """Rank 0 samples and scores (the weights are the same everywhere); every rank reports its FID."""
        outcome = None
        if self.evaluator is not None:
            net = self.ema.model if self.config.eval.weights == "ema" else self.model
            outcome = self.evaluator.evaluate(
                net, self.schedule, self.step, self.files.samples, final=self.step == self.stage_cfg.steps
            )
            self.reporter.artifact(self.step, outcome.grid_path)
        fid, extra = self.parallel.broadcast(None if outcome is None else (outcome.fid, outcome.extra)) or (
            None,
            dict[str, float](),
        )
        if fid is not None:
            self.fid_last = fid
            self.fid_best = fid if self.fid_best is None else min(self.fid_best, fid)
            self.reporter.metrics(
                self.step,
                {
                    "eval/fid": fid,
                    "eval/fid_best": self.fid_best,
                    **extra,
                    **stage_tflops(self.config, self.stage, self.step),
                },
            )
