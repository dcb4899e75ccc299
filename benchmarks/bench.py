"""One speed benchmark of the package on one device: trainer, sampling, FID features, trial packing, reference.

Sections (``--sections``, default all):

* ``trainer``: the real trainer (``fit``, pre-training stage, EMA, optimizer and metrics included) at mask rates
  0 / 0.5 / 0.9: eager at ``--batch``; on CUDA also ``torch.compile`` ("default") at mask 0 at ``--batch`` and CUDA
  graphs ("reduce-overhead") at mask 0 and 0.9 at ``--batch-masked`` (``--full``: more). Each run makes ``2 x --steps``
  steps with ``log_every_steps = --steps``: the first window (allocation, compilation, graph capture) is excluded,
  the last window's ``train/images_per_second`` is the number. FLOPs per step are counted by torch's
  ``FlopCounterMode`` over one forward + loss + backward of the same model (on the meta device: no compute);
  TFLOP/s = FLOPs per step x steps/s, MFU against a measured matmul ceiling (bf16 8192^3 on CUDA).
* ``strategies``: one training step of each masking strategy at its paper's rate (MaskDM patch 90%, MaskDiT 50%,
  deferred masking 75%, token routing 50%) on its own network, images/s and counted FLOPs as ratios to the
  full-token step of the same preset, at ``--batch-masked``.
* ``sampling``: DDIM-100 (eta 1, as the evaluation samples) with the package's sampler and ``sample_images``, bf16
  autocast on CUDA, on a freshly built model (no EMA); ``--sampling-compile`` adds a compiled denoiser.
* ``fid``: Inception features (the package's ``InceptionBackend``, TF-Inception TorchScript weights; where none are
  found, pytorch-fid's architecture with random weights), plus the estimate "DDIM-100 + Inception for 10,000 images".
* ``packing``: 1, 2 and 4 (CPU: 1 and 2) concurrent small trials through Ray Tune fractional GPUs (CPU: CPUs), or
  plain concurrent processes where Ray is not installed; aggregate images/s = sum of the trials' last-window rates,
  against one trial alone.
* ``reference``: runs ``gpu_anchor.py`` and ``gpu_masked_headroom.py`` (two reference scripts that time a plain U-ViT
  training step, kept by the team beside the repository; ``--reference DIR`` names their folder) in this same call
  and prints ours / reference ratios.

Each section is a module beside this script (``bench_trainer.py``, ``bench_sampling.py``, ``bench_fid.py``,
``bench_packing.py``, ``bench_reference.py``, ``bench_strategies.py``; targets in ``bench_targets.py``, shared helpers
and the one timing helper in ``bench_common.py``).

Output: tables on stdout and JSON to ``benchmarks/results/<date>-<device>-bench.json`` (or ``--out``).

    python benchmarks/bench.py                                  # everything, defaults for the device
    python benchmarks/bench.py --quick --device cpu             # CI smoke run (tiny shapes)
    python benchmarks/bench.py --sections trainer --modes eager,default
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import signal
import sys
import tempfile
import traceback
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # loaded by path from elsewhere (a test): the section modules sit beside this file
    sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from bench_common import MODES, ROOT, SECTIONS, StepTimer, device_name, device_slug, fmt, print_table, write_json  # noqa: E402
from bench_fid import section_fid  # noqa: E402
from bench_packing import section_packing  # noqa: E402
from bench_reference import reference_comparison, section_reference  # noqa: E402
from bench_sampling import section_sampling  # noqa: E402
from bench_strategies import section_strategies  # noqa: E402
from bench_targets import TARGETS, compute_targets  # noqa: E402
from bench_trainer import section_trainer  # noqa: E402
from maskdm_sweeps.maskdm import MODEL_PRESETS  # noqa: E402

# what callers (and tests) load from this script: the command line, the run, and the sections' comparison / targets
__all__ = ["TARGETS", "compute_targets", "main", "parse_args", "reference_comparison", "torch"]


def default_out(args, device: torch.device) -> Path:
    return Path(args.out_dir) / f"{date.today().isoformat()}-{device_slug(device)}-bench.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--preset", help="model preset (default: uvit-s2-cifar32 on CUDA, uvit-digits on CPU, tiny with --quick)"
    )
    p.add_argument("--batch", type=int, help="trainer batch (default: 128 on CUDA, 64 on CPU, 16 with --quick)")
    p.add_argument(
        "--batch-masked",
        type=int,
        help="batch of the reduce-overhead rows on CUDA and of the CPU target's "
        "eager mask 0 / 0.9 rows (default: 256, the paper's pre-training batch)",
    )
    p.add_argument(
        "--steps",
        type=int,
        help="timed steps per trainer config, after as many warm-up steps "
        "(default: 60 on CUDA, 20 on CPU, 4 with --quick)",
    )
    p.add_argument(
        "--modes",
        help="trainer modes, comma separated, from "
        + ", ".join(MODES)
        + " (default: eager,default,reduce-overhead on CUDA; eager on CPU)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="CUDA: also compile 'default' at mask 0.9 and 'reduce-overhead' at --batch (~30 s of compilation each)",
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma separated subset of: " + ", ".join(SECTIONS))
    p.add_argument("--skip-packing", action="store_true", help="leave out the packing section")
    p.add_argument("--skip-reference", action="store_true", help="leave out the reference section")
    p.add_argument("--sample-batch", type=int, help="DDIM batch (default: 1000 on CUDA, 32 on CPU, 4 with --quick)")
    p.add_argument("--sampling-steps", type=int, default=100, help="DDIM steps (default: %(default)s)")
    p.add_argument(
        "--sampling-compile",
        action="store_true",
        help="also time DDIM with a torch.compile'd denoiser (~30 s of compilation on a GPU)",
    )
    p.add_argument(
        "--fid-images", type=int, help="images through Inception (default: 2000 on CUDA, 8 on CPU, 2 with --quick)"
    )
    p.add_argument(
        "--fid-weights",
        help="Inception weights file (default: as the package resolves them; random "
        "pytorch-fid weights where none are found)",
    )
    p.add_argument(
        "--packing-backend",
        choices=("auto", "ray", "processes"),
        default="auto",
        help="ray: Ray Tune fractional resources; processes: plain concurrent processes (auto: ray if installed)",
    )
    p.add_argument("--packing-preset", help="preset of the packed trials (default: uvit-digits; tiny with --quick)")
    p.add_argument("--packing-batch", type=int, help="batch of the packed trials (default: 128; 64 on CPU; 16 quick)")
    p.add_argument(
        "--packing-steps",
        type=int,
        help="timed steps per packed trial (default: 150 on CUDA, 10 on CPU, 5 with --quick)",
    )
    p.add_argument(
        "--packing-counts", default=None, help="concurrent trial counts (default: 1,2,4; CPU: up to the cores)"
    )
    p.add_argument(
        "--reference",
        help="folder holding gpu_anchor.py and gpu_masked_headroom.py, the two reference "
        "scripts (without it or --reference-from, the reference section is skipped)",
    )
    p.add_argument(
        "--reference-from",
        help="instead of running the reference scripts, read their outputs: a folder "
        "holding gpu_anchor.json and gpu_masked_headroom.json, or an earlier "
        "bench.py JSON (same card: e.g. an earlier call on the same machine)",
    )
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
    args.packing_counts = (
        [int(n) for n in args.packing_counts.split(",")] if args.packing_counts else ([1, 2] if q else [1, 2, 4])
    )
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
        "date": date.today().isoformat(),
        "device": device_name(device),
        "device_slug": device_slug(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
        "command": shlex.join([sys.executable, *sys.argv]),
        "preset": args.preset,
        "batch": args.batch,
        "batch_masked": args.batch_masked,
        "steps": args.steps,
        "quick": args.quick,
        "sections_run": args.sections,
        "sections": {},
        "errors": {},
    }
    print(
        f"bench: {args.preset}, batch {args.batch} (masked {args.batch_masked}), {device_name(device)}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} CPU threads; sections: {', '.join(args.sections)}",
        flush=True,
    )
    run_timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="maskdm-bench-") as tmp:
        workdir = Path(tmp)
        # the image-folder cache of the random PNGs must not pile up in the user's cache
        os.environ["MASKDM_CACHE"] = str(workdir / "cache")
        runners = {
            "trainer": lambda: section_trainer(args, device, workdir, result),
            "strategies": lambda: section_strategies(args, device, result),
            "sampling": lambda: section_sampling(args, device, result),
            "fid": lambda: section_fid(args, device, workdir, result),
            "packing": lambda: section_packing(args, device, workdir, result),
            "reference": lambda: section_reference(args, device, workdir, result),
        }
        for name in SECTIONS:
            if name not in args.sections:
                continue
            timer = StepTimer()  # host clock: each section syncs its own device (a failed one might fail again here)
            with timer.window():
                try:
                    runners[name]()
                except Exception as exc:
                    result["errors"][name] = traceback.format_exc()[-3000:]
                    result["sections"].setdefault(name, {})["error"] = f"{type(exc).__name__}: {exc}"[:500]
                    print(f"\n== {name}: FAILED: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            result["sections"].setdefault(name, {})["section_seconds"] = timer.seconds
            write_json(args, result)
    result["targets"] = compute_targets(args, device, result)
    run_timer.mark(0)
    result["total_seconds"] = run_timer.first_seconds
    write_json(args, result)
    print_table(
        "targets",
        ["target", "value", "goal", "met", "how"],
        [
            [
                k,
                fmt(t["value"], 2),
                f"{t['op']} {t['target']:g}",
                {True: "yes", False: "NO", None: "-"}[t["met"]],
                t["note"],
            ]
            for k, t in result["targets"].items()
        ],
    )
    print(f"\nwrote {args.out} ({result['total_seconds']:.0f} s)", flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
