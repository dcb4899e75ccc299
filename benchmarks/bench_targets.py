"""The targets ``bench.py`` checks at the end of a run, from the rows of its sections: on one H100/H200 (U-ViT-S/2
32 px, bf16, ratios against the reference scripts run on the same card in the same call), and on the CPU for the
quickstart preset.
"""

from __future__ import annotations

import torch

from bench_common import trainer_row

TARGETS = {  # key: (op, goal)
    "trainer_mask0_compiled_vs_reference": (">=", 1.1),
    "trainer_mask09_reduce_overhead_vs_reference": (">=", 1.0),
    "trainer_mask09_over_mask0_reduce_overhead": (">=", 6.0),
    "ddim100_inception_10k_seconds": ("<", 90.0),
    "packing_4_over_1": (">=", 1.8),
    "cpu_mask09_over_mask0": (">=", 4.0),
}


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
    ro0, ro9 = (trainer_row(result, "reduce-overhead", args.batch_masked, r) for r in (0.0, 0.9))
    put(
        "trainer_mask09_over_mask0_reduce_overhead",
        ro9["images_per_second"] / ro0["images_per_second"] if ro0 and ro9 else None,
        f"batch {args.batch_masked}, reduce-overhead" if ro0 and ro9 else "needs reduce-overhead rows (CUDA)",
    )
    est = sections.get("fid", {}).get("estimate_10k")
    compiled = est.get("total_seconds_compiled_denoiser_best_chunk") if est else None
    put(
        "ddim100_inception_10k_seconds",
        (compiled or est["total_seconds"]) if est else None,
        (
            f"compiled denoiser (a trial with runtime.compile), batch {sections['sampling']['batch']}, best Inception "
            "chunk"
        )
        if compiled
        else f"sampling batch {sections['sampling']['batch']}, "
        f"package Inception chunk {sections['fid'].get('package_chunk', 50)}"
        if est
        else "needs the sampling and fid sections",
    )
    pack = {r["trials"]: r for r in sections.get("packing", {}).get("rows", [])}
    put(
        "packing_4_over_1",
        pack[4]["vs_one_alone"] if 4 in pack else None,
        "aggregate of 4 concurrent trials / one alone" if 4 in pack else "needs the packing section with 4 trials",
    )

    def eager_ratio(batch: int) -> float | None:
        e0, e9 = (trainer_row(result, "eager", batch, r) for r in (0.0, 0.9))
        return e9["images_per_second"] / e0["images_per_second"] if e0 and e9 and device.type == "cpu" else None

    # at the paper's pre-training batch (as the GPU target); the --batch ratio is shown beside it
    cpu_value, at_batch = eager_ratio(args.batch_masked), eager_ratio(args.batch)
    put(
        "cpu_mask09_over_mask0",
        cpu_value,
        (
            f"eager, {args.preset}, batch {args.batch_masked}"
            + (f" (batch {args.batch}: {at_batch:.2f}x)" if at_batch and args.batch != args.batch_masked else "")
            + ("" if args.preset == "uvit-digits" else " (the target is for the quickstart preset, uvit-digits)")
        )
        if cpu_value is not None
        else "CPU runs only",
    )
    return targets
