"""A minute-long tour of the method on the CPU: masked pre-training, fine-tuning, DDIM sampling, a PNG grid.

``python -m maskdm_sweeps.demo --out results/demo`` trains a small U-ViT on the embedded digits, first with 50%
patch masking (MDSM), then with all patches visible (DSM) from those weights, and writes ``samples.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .data import load_digits_images
from .maskdm import DDIMSampler, UViT, add_noise, build_mask, build_model, linear_schedule, mdsm_loss, sample_images
from .maskdm.masking import MaskStrategy


def train_steps(
    model: UViT,
    images: torch.Tensor,
    steps: int,
    mask: MaskStrategy | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """Train ``model`` in place for ``steps`` AdamW steps on random batches of ``images`` (N, C, H, W).

    ``mask=None`` trains plain DSM; a strategy trains MDSM on its visible patches. Returns the loss per step.
    """
    schedule = linear_schedule()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.99, 0.99), weight_decay=0.03)
    grid, patch = model.config.grid, model.config.patch_size
    losses = []
    model.train()
    for _ in range(steps):
        x0 = images[torch.randint(0, images.shape[0], (batch_size,), generator=gen)]  # (B, C, H, W)
        t = torch.randint(0, schedule.num_timesteps, (batch_size,), generator=gen)  # (B,)
        noise = torch.randn(x0.shape, generator=gen)  # (B, C, H, W)
        keep = None if mask is None else mask.sample(batch_size, grid, gen)  # (B, K)
        loss = mdsm_loss(model(add_noise(x0, noise, t, schedule), t, keep), noise, patch, keep)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    """Write ``(B, C, H, W)`` images in [-1, 1] as one PNG grid, upscaled so digits are easy to see."""
    from torchvision.utils import save_image

    big = torch.nn.functional.interpolate(images, scale_factor=4, mode="nearest")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((big + 1) / 2, path, nrow=nrow, padding=2, pad_value=1.0)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/demo"), help="output directory (default: %(default)s)")
    parser.add_argument("--pretrain-steps", type=int, default=400, help="MDSM steps at 50%% masking")
    parser.add_argument("--finetune-steps", type=int, default=400, help="DSM steps, all patches visible")
    parser.add_argument("--sampling-steps", type=int, default=50, help="DDIM steps for the sample grid")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    images, _ = load_digits_images(16)
    model = build_model("digits-small")
    started = time.perf_counter()
    for stage, steps, mask in (
        ("pre-train (MDSM, 50% patch mask)", args.pretrain_steps, build_mask("patch", rate=0.5)),
        ("fine-tune (DSM)", args.finetune_steps, None),
    ):
        losses = train_steps(model, images, steps, mask, seed=args.seed)
        head, tail = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
        print(f"{stage:34s} {steps:5d} steps  loss {head:.3f} -> {tail:.3f}  ({time.perf_counter() - started:.0f} s)")
    model.eval()
    sampler = DDIMSampler(linear_schedule(), eta=0.0)
    sampler.set_timesteps(args.sampling_steps)
    samples = sample_images(lambda x, t: model(x, t), sampler, (64, 1, 16, 16), torch.Generator().manual_seed(1))
    path = save_grid(samples, args.out / "samples.png")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
