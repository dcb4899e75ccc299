"""The ``reference`` section of ``bench.py``: runs the two reference scripts, ``gpu_anchor.py`` and
``gpu_masked_headroom.py`` (they time a plain U-ViT training step, sampling forwards and Inception; the team keeps
them beside the repository, not in it), as subprocesses in the same call, same interpreter, same card, and prints
ours / reference per row. ``--reference DIR`` names their folder; ``--reference-from`` reads an earlier output
instead. Without either, the section is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from bench_common import MASK_RATES, StepTimer, fmt, log, print_table, trainer_row

REFERENCE_FILES = ("gpu_anchor.py", "gpu_masked_headroom.py")


def find_reference_dir(choice: str | None) -> Path | None:
    """``--reference DIR`` when it holds both scripts; there is no default folder."""
    if choice and all((Path(choice) / f).is_file() for f in REFERENCE_FILES):
        return Path(choice).resolve()
    return None


def run_reference(ref_dir: Path, out_dir: Path, timeout: float) -> dict:
    """Run both reference scripts (same interpreter, same device) and load their JSON outputs."""
    loaded = {}
    for script in REFERENCE_FILES:
        env = {**os.environ, "OUT": str(out_dir), "PYTHONUNBUFFERED": "1"}
        log(f"reference: running {ref_dir / script} ...")
        timer = StepTimer()  # the scripts synchronise their own device; this is the subprocess's wall time
        with timer.window():
            proc = subprocess.run(
                [sys.executable, script], cwd=ref_dir, env=env, capture_output=True, text=True, timeout=timeout
            )
        if proc.returncode != 0:
            raise RuntimeError(f"{script} exited {proc.returncode}: {proc.stderr[-1500:]}")
        name = script.replace(".py", ".json")
        loaded[name] = json.loads((out_dir / name).read_text())
        loaded[name]["wall_seconds"] = timer.seconds
    return loaded


def _ref_row(rows: list[dict], **match) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items()) and "img_s" in r), None)


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
        out.append(
            {
                "name": name,
                "ours": ours_v,
                "reference": ref_v if ok else None,
                "reference_raw": ref_v,
                "ratio": ours_v / ref_v if ok and ours_v and ref_v else None,
                "target": target,
                "target_key": key,
                "ours_mode": ours.get("mode") if isinstance(ours, dict) else None,
            }
        )

    compiled = ("default", "reduce-overhead", "max-autotune")
    add(
        f"trainer mask 0, batch {b}, compiled",
        trainer_row(result, compiled, b, 0.0),
        _ref_row(a_rows, model=preset, mode="compile", batch=b, mask_rate=0.0),
        True,
        1.1,
        "trainer_mask0_compiled_vs_reference",
    )
    add(
        f"trainer mask 0.9, batch {bm}, reduce-overhead",
        trainer_row(result, "reduce-overhead", bm, 0.9),
        _ref_row(h_rows, mode="reduce-overhead", batch=bm, mask_rate=0.9),
        s2,
        1.0,
        "trainer_mask09_reduce_overhead_vs_reference",
    )
    add(
        f"trainer mask 0, batch {bm}, reduce-overhead",
        trainer_row(result, "reduce-overhead", bm, 0.0),
        _ref_row(h_rows, mode="reduce-overhead", batch=bm, mask_rate=0.0),
        s2,
    )
    for rate in MASK_RATES:
        add(
            f"trainer mask {rate}, batch {b}, eager",
            trainer_row(result, "eager", b, rate),
            _ref_row(a_rows, model=preset, mode="eager", batch=b, mask_rate=rate),
            True,
        )
    add(
        f"trainer mask 0.9, batch {b}, compiled (default)",
        trainer_row(result, "default", b, 0.9),
        _ref_row(a_rows, model=preset, mode="compile", batch=b, mask_rate=0.9),
        True,
    )
    sampling = result["sections"].get("sampling", {})
    ref_sample = next((r for r in a_rows if r.get("what") == "sample_forward" and r.get("model") == preset), None)
    add(
        "DDIM-100 sampling img/s",
        sampling.get("images_per_second"),
        ref_sample.get("ddim100_img_s") if ref_sample else None,
        sampling.get("steps") == 100,
    )
    fid = result["sections"].get("fid", {})
    ref_inc = next((r for r in a_rows if r.get("what") == "inception_v3_299_forward"), None)
    add(
        "Inception features img/s (ref: torchvision, random weights, bf16)",
        fid.get("images_per_second_best"),
        ref_inc.get("img_s") if ref_inc else None,
        True,
    )
    return out


def section_reference(args, device: torch.device, workdir: Path, result: dict) -> None:
    if args.reference_from:
        src = Path(args.reference_from)
        if src.is_file():  # an earlier bench.py JSON that holds the reference outputs
            earlier = json.loads(src.read_text())["sections"]["reference"]
            loaded = {
                "gpu_anchor.json": earlier["gpu_anchor"],
                "gpu_masked_headroom.json": earlier["gpu_masked_headroom"],
            }
        else:
            loaded = {
                f.replace(".py", ".json"): json.loads((src / f.replace(".py", ".json")).read_text())
                for f in REFERENCE_FILES
            }
        ref_dir = src
    else:
        found = find_reference_dir(args.reference)
        if found is None:
            msg = (
                f"{args.reference} does not hold {' and '.join(REFERENCE_FILES)}"
                if args.reference
                else "no reference scripts named"
            ) + "; pass --reference DIR"
            result["sections"]["reference"] = {"skipped": msg}
            print(f"\n== reference: skipped ({msg})", flush=True)
            return
        ref_dir = found
        out_dir = workdir / "reference"
        out_dir.mkdir()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        loaded = run_reference(ref_dir, out_dir, args.reference_timeout)
    anchor, headroom = loaded["gpu_anchor.json"], loaded["gpu_masked_headroom.json"]
    comparison = reference_comparison(args, result, anchor, headroom)
    result["sections"]["reference"] = {
        "dir": str(ref_dir),
        "device": anchor.get("device"),
        "torch": anchor.get("torch"),
        "matmul_bf16_tflops": anchor.get("matmul_bf16_tflops"),
        "comparison": comparison,
        "gpu_anchor": anchor,
        "gpu_masked_headroom": headroom,
    }
    ref_ro = [
        _ref_row(headroom.get("rows", []), mode="reduce-overhead", batch=args.batch_masked, mask_rate=r)
        for r in (0.0, 0.9)
    ]
    notes = []
    if ref_ro[0] and ref_ro[1]:
        notes.append(
            f"reference's own mask 0.9 / mask 0 at batch {args.batch_masked}, reduce-overhead: "
            f"{ref_ro[1]['img_s'] / ref_ro[0]['img_s']:.2f}x"
        )
    if not any(c["ratio"] for c in comparison):
        notes.append(
            "no ratios: ratios need the same card in the same run and --preset uvit-s2-cifar32 (on the CPU "
            "the reference scripts run toy shapes)"
        )
    print_table(
        f"reference: ours vs {ref_dir} on {anchor.get('device')} (torch {anchor.get('torch')})",
        ["comparison", "ours img/s", "reference img/s", "ratio", "target"],
        [
            [
                c["name"],
                fmt(c["ours"]),
                fmt(c["reference"]),
                f"{c['ratio']:.2f}x" if c["ratio"] else "n/a",
                f">= {c['target']}x" if c["target"] else "",
            ]
            for c in comparison
        ],
        notes,
    )
