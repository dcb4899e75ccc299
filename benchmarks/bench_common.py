"""What every section of ``bench.py`` shares: the one timing helper (``StepTimer``), device names, table printing,
the data and trial configuration of a timed ``fit``, and the JSON writer.

The modules of ``benchmarks/`` import each other by plain name (``from bench_common import ...``): run as a script,
Python puts ``benchmarks/`` first on ``sys.path``; ``bench.py`` adds it when it is loaded from elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (HERE, ROOT):  # ROOT: a checkout that is not pip-installed
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402

from maskdm_sweeps.maskdm import MODEL_PRESETS  # noqa: E402
from maskdm_sweeps.testing import tiny_trial_config  # noqa: E402
from maskdm_sweeps.trainer import NullReporter, TrialConfig, fit  # noqa: E402

SECTIONS = ("trainer", "strategies", "sampling", "fid", "packing", "reference")
MASK_RATES = (0.0, 0.5, 0.9)
COMPILED_RATES = (0.0, 0.9)
MODES = ("eager", "default", "reduce-overhead", "max-autotune")


# ------------------------------------------------------------------------------------------------ timing
def resolve_device(device: torch.device | str | None) -> torch.device | None:
    """``None`` stays ``None`` (time on the host only); ``"auto"`` (a trial config's default) as the trainer reads
    it."""
    if device is None or isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def sync(device: torch.device | None) -> None:
    """Wait until the work queued on ``device`` has finished (CUDA runs asynchronously; the CPU does not)."""
    if device is not None and device.type == "cuda" and torch.cuda.is_initialized():
        torch.cuda.synchronize(device)


class StepTimer(NullReporter):
    """Times windows of steps on one device: the timing helper of every section.

    ``mark(step)`` synchronises the device (everything queued so far has run) and records the step with the time
    (``time``: ``perf_counter``; ``wall``: ``time.time()``, comparable across processes); a window is the span
    between two consecutive marks. Two ways in:

    * as the trainer's reporter, ``fit(cfg, stage, workdir, timer)``: the trainer reports at the end of each logging
      window, after its host sync (``loss.item()``) and before it restarts its own window clock; each report with
      ``train/images_per_second`` becomes a mark holding the trainer's own rate for that window.
      ``on_first_window`` runs at the first such report, before its mark (the packing trials' barrier): the
      warm-up window then ends when it returns.
    * around a block of work: ``with timer.window(steps): ...`` marks step 0 before it and ``steps`` after it.

    ``seconds``, ``steps`` and ``steps_per_second`` describe the last window; ``first_seconds`` the time from the
    timer's creation to its first mark (set-up and warm-up of a trainer run).
    """

    def __init__(self, device: torch.device | str | None = None, on_first_window=None):
        self.device = resolve_device(device)
        self.on_first_window = on_first_window
        self.created = time.perf_counter()
        self.marks: list[dict] = []

    def mark(self, step: int, **values) -> None:
        sync(self.device)
        self.marks.append({"step": step, "time": time.perf_counter(), "wall": time.time(), **values})

    def metrics(self, step, values):
        if "train/images_per_second" not in values:
            return
        if not self.marks and self.on_first_window is not None:
            self.on_first_window()
        self.mark(step, images_per_second=values["train/images_per_second"], loss=values.get("train/loss"))

    @contextlib.contextmanager
    def window(self, steps: int = 1):
        self.mark(0)
        yield self
        self.mark(steps)

    @property
    def first(self) -> dict:
        return self.marks[0]

    @property
    def last(self) -> dict:
        return self.marks[-1]

    @property
    def previous(self) -> dict:
        if len(self.marks) < 2:
            raise RuntimeError(f"expected 2 timing marks, got {len(self.marks)}")
        return self.marks[-2]

    @property
    def seconds(self) -> float:
        return self.last["time"] - self.previous["time"]

    @property
    def steps(self) -> int:
        return self.last["step"] - self.previous["step"]

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds

    @property
    def first_seconds(self) -> float:
        return self.first["time"] - self.created


# ------------------------------------------------------------------------------------------------ devices, output
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine() or 'cpu'} ({os.cpu_count()} cores)"


def device_slug(device: torch.device) -> str:
    if device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return f"cpu-{os.cpu_count()}core"


def fmt(value, digits: int = 1) -> str:
    """Numbers for the tables: thousands separated, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:,.{digits}f}"


def sig(value, digits: int = 3) -> str:
    """Small and large rates alike: 3 significant digits (0.00412, 41.2, 4,120)."""
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 10**digits:
        return f"{value:,.0f}"
    return f"{value:,.{max(0, digits - 1 - math.floor(math.log10(abs(value))))}f}"


def print_table(title: str, headers: list[str], rows: list[list], notes: list[str] | None = None) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print(f"\n== {title}")
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    for note in notes or []:
        print(f"  note: {note}")
    sys.stdout.flush()


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_json(args, result: dict) -> None:
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str))


def trainer_row(result: dict, mode: str | tuple, batch: int, rate: float) -> dict | None:
    """The fastest trainer row of ``mode`` (one or several), ``batch`` and mask ``rate`` that has a rate."""
    modes = (mode,) if isinstance(mode, str) else mode
    rows = [
        r
        for r in result["sections"].get("trainer", {}).get("rows", [])
        if r["mode"] in modes and r["batch"] == batch and r["mask_rate"] == rate and "images_per_second" in r
    ]
    return max(rows, key=lambda r: r["images_per_second"], default=None)


# ------------------------------------------------------------------------------------------------ a timed fit
def preset_data(preset: str, workdir: Path, num_images: int = 512) -> dict:
    """The ``data:`` section that gives ``preset`` its own size and channels.

    1-channel presets train on the embedded digits; 3-channel ones on a folder of random RGB PNGs written here (a
    step's cost does not depend on pixel values; ``channels`` is 1 for digits and 3 for every other dataset).
    """
    cfg = MODEL_PRESETS[preset]
    if cfg.in_chans == 1:
        return {"name": "digits", "image_size": max(8, cfg.img_size)}
    folder = workdir / f"random-rgb-{cfg.img_size}"
    if not folder.is_dir():
        import numpy as np
        from PIL import Image

        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(num_images):
            pixels = rng.integers(0, 256, (cfg.img_size, cfg.img_size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    return {"name": "image_folder", "path": str(folder), "image_size": cfg.img_size}


def trial_config(
    preset: str, data: dict, batch: int, rate: float, steps: int, device: str, mode: str = "eager"
) -> TrialConfig:
    """A pre-training stage of ``2 * steps`` steps reporting every ``steps``: the first window is warm-up."""
    runtime = {"device": device, "log_every_steps": steps, "checkpoint_every_steps": 10**9, "keep_checkpoints": 1}
    if mode != "eager":
        runtime.update(compile=True, compile_mode=mode)
    return tiny_trial_config(
        data=data,
        model={"preset": preset},
        mask={"strategy": "patch", "rate": rate},
        pretrain={"steps": 2 * steps, "batch_size": batch, "lr": 2e-4, "warmup_steps": 0},
        runtime=runtime,
    )


def scratch_dir() -> str | None:
    """Where ``fit`` writes its end-of-stage checkpoint (~0.75 GB for U-ViT-S/2): RAM when there is room."""
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 8 * 2**30:
            return str(shm)
    return None


def run_fit(cfg: TrialConfig, timer: StepTimer | None = None) -> dict:
    """Run the stage with ``timer`` (default: a new one on the trial's device) as its reporter.

    The number is the trainer's own rate of its last logging window; ``images_per_second_synced`` is the same
    window timed by the marks (taken after a device sync), a cross-check that the host did not run ahead.
    """
    timer = timer or StepTimer(cfg.runtime.device)
    with tempfile.TemporaryDirectory(prefix="maskdm-bench-", dir=scratch_dir()) as tmp:
        fit(cfg, "pretrain", Path(tmp), timer)
    wall = time.perf_counter() - timer.created
    last = timer.last
    return {
        "images_per_second": last["images_per_second"],
        "images_per_second_synced": timer.steps_per_second * cfg.pretrain.batch_size,
        "timed_steps": timer.steps,
        "setup_and_warm_seconds": timer.first_seconds,  # model build, data, compile / graph capture, first window
        "loss_last": last["loss"],
        "wall_seconds": wall,
    }
