"""Trainer images/s at mask rates 0, 0.5 and 0.9 for one preset and batch, and the ratios to mask 0.

The first, smaller form of ``bench.py``'s ``trainer`` section, kept for its command and its earlier results: the same
measurement (``bench_common.run_fit``: the real trainer, ``fit``, one pre-training stage per rate, the rate of the
second logging window, so that allocation and warm-up are excluded), on the embedded digits at ``--image-size``, eager
only, without FLOPs. ``bench.py --sections trainer`` adds FLOPs, MFU, compiled modes and CUDA graphs.

    python benchmarks/trainer_throughput.py --preset uvit-digits --batch 128 --steps 40
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from bench_common import MASK_RATES, run_fit, trial_config


def measure(preset: str, batch: int, steps: int, rate: float, device: str, image_size: int) -> float:
    """Images/s of the second half of ``steps`` steps (two logging windows of ``steps // 2``)."""
    data = {"name": "digits", "image_size": image_size}
    return run_fit(trial_config(preset, data, batch, rate, max(1, steps // 2), device))["images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="uvit-digits", help="model preset (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=8, help="pixels on a side (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=128, help="images per step (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=40, help="steps per rate; the second half is timed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    rows = []
    for rate in MASK_RATES:
        ips = measure(args.preset, args.batch, args.steps, rate, args.device, args.image_size)
        rows.append({"mask_rate": rate, "images_per_second": round(ips, 1)})
    base = rows[0]["images_per_second"]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(
        f"trainer throughput: preset {args.preset}, {args.image_size}px, batch {args.batch}, "
        f"{args.device} ({device_name}), {torch.get_num_threads()} threads"
    )
    print(f"{'mask rate':>9}  {'images/s':>9}  {'vs mask 0':>9}")
    for row in rows:
        row["ratio_to_mask0"] = round(row["images_per_second"] / base, 2)
        print(f"{row['mask_rate']:9.1f}  {row['images_per_second']:9.1f}  {row['ratio_to_mask0']:8.2f}x")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "date": date.today().isoformat(),
                    "device": device_name,
                    "preset": args.preset,
                    "image_size": args.image_size,
                    "batch": args.batch,
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
