"""A real learning test: a tiny U-ViT trained on the embedded digits lowers its denoising loss, masked or not."""

import pytest
import torch

from maskdm_sweeps.data import load_digits_images
from maskdm_sweeps.demo import train_steps
from maskdm_sweeps.maskdm import build_mask, build_model


@pytest.mark.parametrize("mask", [None, build_mask("patch", rate=0.5)], ids=["dsm", "mdsm-50"])
def test_tiny_model_learns_digits_in_a_few_hundred_cpu_steps(mask):
    torch.manual_seed(0)
    images, _ = load_digits_images(8)
    model = build_model("tiny", img_size=8)
    losses = train_steps(model, images, steps=300, mask=mask, batch_size=64, lr=2e-3, seed=0)
    start, end = sum(losses[:10]) / 10, sum(losses[-50:]) / 50
    assert end < 0.5 * start, (start, end)
