"""The ``sampling`` section of ``bench.py``: DDIM-100 (eta 1, as the evaluation samples) with the package's sampler
and ``sample_images`` on a freshly built model (no EMA), bf16 autocast on CUDA; ``--sampling-compile`` adds a
``torch.compile``'d denoiser (what the evaluation runs when ``runtime.compile`` is on).
"""

from __future__ import annotations

import contextlib

import torch

from bench_common import StepTimer, device_name, fmt, print_table, sig
from maskdm_sweeps.maskdm import MODEL_PRESETS, UViT, build_schedule


def section_sampling(args, device: torch.device, result: dict) -> None:
    from maskdm_sweeps.maskdm import sample_images
    from maskdm_sweeps.trainer.evaluation import build_sampler

    cfg = MODEL_PRESETS[args.preset]
    torch.manual_seed(0)
    model = UViT(cfg).to(device).eval()
    schedule = build_schedule("linear", 1000)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    )
    shape = (args.sample_batch, cfg.in_chans, cfg.img_size, cfg.img_size)
    rows = []
    variants = [("eager", model)] + (
        [("compiled", torch.compile(model, dynamic=False))] if args.sampling_compile else []
    )
    for name, net in variants:

        def denoiser(x, t, net=net):
            with autocast():
                return net(x, t)

        gen = torch.Generator(device=device).manual_seed(0)
        timer = StepTimer(device)
        with timer.window(2):  # warm-up / compile
            sample_images(denoiser, build_sampler("ddim", schedule, 2, 1.0), shape, gen, device)
        warm = timer.seconds
        sampler = build_sampler("ddim", schedule, args.sampling_steps, 1.0)
        with timer.window(args.sampling_steps):
            sample_images(denoiser, sampler, shape, gen, device)
        dt = timer.seconds
        ips = args.sample_batch / dt
        rows.append(
            {
                "model": name,
                "seconds": dt,
                "images_per_second": ips,
                "denoiser_forwards_per_second": ips * args.sampling_steps,
                "warm_seconds": warm,
            }
        )
    result["sections"]["sampling"] = {
        "preset": args.preset,
        "sampler": "ddim",
        "eta": 1.0,
        "steps": args.sampling_steps,
        "batch": args.sample_batch,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "rows": rows,
        "images_per_second": rows[0]["images_per_second"],  # the package's path without runtime.compile: eager
        "images_per_second_compiled": rows[1]["images_per_second"] if len(rows) > 1 else None,
    }
    print_table(
        f"sampling: DDIM-{args.sampling_steps} (eta 1), {args.preset}, no EMA, {device_name(device)}",
        ["denoiser", "batch", "seconds", "img/s", "forwards/s", "warm s"],
        [
            [
                r["model"],
                args.sample_batch,
                fmt(r["seconds"], 2),
                sig(r["images_per_second"]),
                sig(r["denoiser_forwards_per_second"]),
                fmt(r["warm_seconds"]),
            ]
            for r in rows
        ],
        []
        if args.sampling_compile
        else [
            "--sampling-compile adds a torch.compile'd denoiser (what the "
            "package's evaluation runs when runtime.compile is on)"
        ],
    )
    del model, variants
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
