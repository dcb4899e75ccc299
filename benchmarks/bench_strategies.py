"""The ``strategies`` section of ``bench.py``: one training step of each masking strategy at its paper's rate, against
the full-token step of the same preset.

Each row times ``--steps`` optimizer steps (forward, the strategy's loss, backward, AdamW) after 2 warm-up steps, on
the network the strategy trains (a MaskDiT decoder or a patch-mixer included), at ``--batch-masked``; FLOPs per image
are counted exactly (``maskdm.flops``, the count the equal-compute comparison uses). Rates: MaskDM patch 90%
(Lei et al.), MaskDiT 50% with a 2-block decoder, deferred masking 75% with a 2-block mixer, token routing 50%
(from the first in-block on).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import torch

from bench_common import StepTimer, device_name, fmt, print_table, sig
from maskdm_sweeps.maskdm import (
    MODEL_PRESETS,
    DeferredMasking,
    MaskDiT,
    PatchMask,
    TokenRouting,
    UViT,
    build_schedule,
    network_overrides,
    token_counts,
    train_flops_per_image,
    training_loss,
)

PAPER_RATES = {
    "full tokens": None,
    "maskdm patch r=0.9": PatchMask(0.9),
    "maskdit r=0.5": MaskDiT(0.5, decoder_depth=2, mae_coef=0.1),
    "deferred r=0.75": DeferredMasking(0.75, mixer_depth=2),
    "routing r=0.5": TokenRouting(0.5, route_from=1),
}


def _step_fn(model, strategy, batch: int, device: torch.device):
    cfg = model.config
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    abar = build_schedule("linear", 1000).alphas_cumprod.float().to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=gen, device=device)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    )

    def step():
        t = torch.randint(0, 1000, (batch,), generator=gen, device=device)
        noise = torch.randn(x0.shape, generator=gen, device=device)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        keep = None if strategy is None else strategy.sample(batch, cfg.grid, gen, device)
        with autocast():
            loss = training_loss(strategy, model, x_t, t, noise, keep, cfg.patch_size)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def section_strategies(args, device: torch.device, result: dict) -> None:
    base = MODEL_PRESETS[args.preset]
    rows = []
    for name, strategy in PAPER_RATES.items():
        cfg = replace(base, **(network_overrides(strategy) if strategy is not None else {}))
        torch.manual_seed(0)
        model = UViT(cfg).to(device).train()
        counts = token_counts(strategy, cfg.grid) if strategy is not None else None
        flops = train_flops_per_image(cfg, counts.kept if counts else cfg.num_patches, counts.span if counts else None)
        step = _step_fn(model, strategy, args.batch_masked, device)
        timer = StepTimer(device)
        with timer.window(2):
            step()
            step()
        with timer.window(args.steps):
            for _ in range(args.steps):
                step()
        rows.append(
            {
                "strategy": name,
                "images_per_second": args.batch_masked * args.steps / timer.seconds,
                "flops_per_image": flops,
                "parameters": sum(p.numel() for p in model.parameters()),
            }
        )
        del model
    full = rows[0]
    for row in rows:
        row["ratio_to_full_tokens"] = row["images_per_second"] / full["images_per_second"]
        row["flops_ratio"] = row["flops_per_image"] / full["flops_per_image"]
    result["sections"]["strategies"] = {
        "preset": args.preset,
        "batch": args.batch_masked,
        "steps": args.steps,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "rows": rows,
    }
    print_table(
        f"strategies: one training step at each paper's rate, {args.preset}, batch {args.batch_masked}, "
        f"{device_name(device)}",
        ["strategy", "params", "img/s", "x full", "GFLOP/img", "FLOPs x full"],
        [
            [
                r["strategy"],
                f"{r['parameters']:,}",
                sig(r["images_per_second"]),
                f"{r['ratio_to_full_tokens']:.2f}x",
                fmt(r["flops_per_image"] / 1e9, 3),
                f"{r['flops_ratio']:.2f}",
            ]
            for r in rows
        ],
        [
            "x full: images/s over the full-token step of the same preset, measured in this run; FLOPs x full: "
            "the counted training FLOPs per image over the full-token step's"
        ],
    )
