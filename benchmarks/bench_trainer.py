"""The ``trainer`` section of ``bench.py``: the real trainer (``fit``, pre-training stage with patch masking: EMA,
optimizer and metrics included) at mask rates 0 / 0.5 / 0.9, eager and, on CUDA, compiled and with CUDA graphs.

Each run makes ``2 x --steps`` steps with ``log_every_steps = --steps`` and is timed by ``StepTimer``: the first
window (allocation, compilation, graph capture) is excluded, the last window's rate is the number. FLOPs per step
are counted by torch's ``FlopCounterMode`` over one forward + loss + backward of the same model on the meta device
(no compute); MFU is against a measured matmul ceiling (bf16 8192^3 on CUDA, fp32 on the CPU).
"""

from __future__ import annotations

import traceback
from pathlib import Path

import torch

from bench_common import (
    COMPILED_RATES,
    MASK_RATES,
    MODES,
    StepTimer,
    device_name,
    fmt,
    log,
    preset_data,
    print_table,
    run_fit,
    sig,
    trial_config,
    write_json,
)
from maskdm_sweeps.maskdm import MODEL_PRESETS, UViT, mdsm_loss, resolve_model_config


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
    timer = StepTimer(device)
    with timer.window(iters):
        for _ in range(iters):
            a @ b
    return {"dtype": str(dtype).removeprefix("torch."), "n": n, "tflops": 2 * n**3 * timer.steps_per_second / 1e12}


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


def trainer_plan(args, device: torch.device) -> tuple[list[tuple[str, int, float]], list[str]]:
    """(mode, batch, mask rate) triples to run, and notes on what is skipped.

    On CUDA the default is the least that answers the targets (``bench_targets.py``), since each compiled config
    costs ~30 s of compilation: eager at 0 / 0.5 / 0.9 and ``default`` at mask 0 (``--batch``), ``reduce-overhead``
    at 0 and 0.9 (``--batch-masked``). ``--full`` adds ``default`` at 0.9 and ``reduce-overhead`` at ``--batch`` too.
    """
    notes = []
    modes = (
        [m.strip() for m in args.modes.split(",")]
        if args.modes
        else (["eager", "default", "reduce-overhead"] if device.type == "cuda" else ["eager"])
    )
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"--modes: unknown mode {m!r}; choose from {', '.join(MODES)}")
    if device.type != "cuda":
        if "reduce-overhead" in modes:
            modes.remove("reduce-overhead")
        if not args.modes:
            notes.append(
                "compiled modes skipped on the CPU (inductor's C++ compile takes minutes on 2 cores; "
                "force them with --modes eager,default); reduce-overhead needs CUDA graphs (CUDA only)"
            )
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


def section_trainer(args, device: torch.device, workdir: Path, result: dict) -> None:
    plan, notes = trainer_plan(args, device)
    cfg_model = MODEL_PRESETS[args.preset]
    data = preset_data(args.preset, workdir)
    ceiling = matmul_ceiling(device, args.quick)
    section = result["sections"]["trainer"] = {
        "preset": args.preset,
        "image_size": cfg_model.img_size,
        "channels": cfg_model.in_chans,
        "timed_steps": args.steps,
        "data": data["name"],
        "stage": "pretrain",
        "mask_strategy": "patch",
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "matmul_ceiling": ceiling,
        "rows": [],
        "notes": notes,
    }
    log(f"trainer: matmul ceiling {sig(ceiling['tflops'])} TFLOP/s ({ceiling['dtype']})")
    for mode, batch, rate in plan:
        cfg = trial_config(args.preset, data, batch, rate, args.steps, device.type, mode)
        mc = cfg.model_config_resolved()
        keep = cfg.mask.keep_count(mc.grid)  # what the trainer's mask keeps
        row = {
            "mode": mode,
            "batch": batch,
            "mask_rate": rate,
            "kept_tokens": keep,
            "effective_mask_rate": round(1 - keep / mc.num_patches, 4),
        }
        log(f"trainer: {mode}, batch {batch}, mask {rate} ...")
        try:
            if mode != "eager":
                torch._dynamo.reset()  # a fresh cache per config: no recompile-limit fallback to eager
            row.update(run_fit(cfg))
            flops = count_step_flops(args.preset, mc.in_chans, mc.img_size, batch, keep)
            steps_per_second = row["images_per_second"] / batch
            row.update(
                step_ms=1e3 / steps_per_second,
                flops_per_step=flops,
                tflops=flops * steps_per_second / 1e12,
                mfu=flops * steps_per_second / (ceiling["tflops"] * 1e12),
            )
            drift = abs(row["images_per_second_synced"] / row["images_per_second"] - 1)
            if drift > 0.1:
                notes.append(
                    f"{mode} b{batch} mask {rate}: the trainer's window rate and the synchronised one "
                    f"differ by {drift:.0%} (host ran ahead of the device?)"
                )
        except Exception as exc:
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
        base = next(
            (
                r
                for r in section["rows"]
                if r["mode"] == row["mode"]
                and r["batch"] == row["batch"]
                and r["mask_rate"] == 0.0
                and "images_per_second" in r
            ),
            None,
        )
        if base and "images_per_second" in row:
            row["ratio_to_mask0"] = row["images_per_second"] / base["images_per_second"]
    rows = [
        [
            r["mode"],
            r["batch"],
            f"{r['mask_rate']:.1f}",
            r["kept_tokens"],
            sig(r.get("images_per_second")) if "error" not in r else "FAILED",
            fmt(r.get("step_ms"), 2),
            f"{r['ratio_to_mask0']:.2f}x" if "ratio_to_mask0" in r else "-",
            sig(r["flops_per_step"] / 1e9 if "flops_per_step" in r else None),
            sig(r.get("tflops")),
            sig(100 * r["mfu"] if "mfu" in r else None, 2),
            fmt(r.get("setup_and_warm_seconds")),
        ]
        for r in section["rows"]
    ]
    print_table(
        f"trainer: {args.preset} ({cfg_model.img_size}px, {cfg_model.in_chans} ch), {section['precision']}, "
        f"{args.steps} timed steps, {device_name(device)}; matmul ceiling {sig(ceiling['tflops'])} TFLOP/s "
        f"({ceiling['dtype']})",
        ["mode", "batch", "mask", "K", "img/s", "step ms", "vs mask 0", "GFLOP/step", "TFLOP/s", "MFU %", "warm s"],
        rows,
        notes,
    )
