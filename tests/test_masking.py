"""Mask strategies: the official counting rules, and the properties the token gather relies on."""

import pytest
import torch

from maskdm_sweeps.maskdm import STRATEGIES, BlockMask, CropMask, PatchMask, build_strategy, effective_mask_rate

GRID = 16  # CelebA 64 at patch 4, CelebA-HQ 256 at patch 16: the grid of the method's rate table


def draw(mask, batch=32, grid=GRID, seed=0):
    return mask.sample(batch, grid, torch.Generator().manual_seed(seed), "cpu")


@pytest.mark.parametrize(
    "mask, kept, effective",
    [
        (PatchMask(rate=0.9), 256 - 230, 230 / 256),  # int(0.9 * 256) = 230
        (PatchMask(rate=0.5), 128, 0.5),
        (PatchMask(rate=0.0), 256, 0.0),
        (PatchMask(rate=0.1), 256 - 25, 25 / 256),  # int(25.6) = 25: the count is floored, never rounded
        (PatchMask(rate=0.3), 256 - 76, 76 / 256),  # int(76.8) = 76
        (BlockMask(rate=0.9, block_size=4), 32, 0.875),  # 230 // 16 = 14 blocks = 224 patches
        (BlockMask(rate=0.1, block_size=4), 240, 0.0625),  # 25 // 16 = 1 block
        (BlockMask(rate=0.5, block_size=2), 128, 0.5),  # 128 // 4 = 32 blocks
        (BlockMask(rate=0.295, block_size=2), 256 - 72, 72 / 256),  # int(75.52) // 4 = 18 blocks (rounding: 19)
        (CropMask(crop_size=15), 225, 1 - 225 / 256),  # 12.1%
        (CropMask(crop_size=11), 121, 1 - 121 / 256),  # 52.7%
        (CropMask(crop_size=5), 25, 1 - 25 / 256),  # 90.2%
    ],
)
def test_counts_follow_the_official_rules(mask, kept, effective):
    assert mask.keep_count(GRID) == kept
    assert effective_mask_rate(mask, GRID) == pytest.approx(effective)
    assert draw(mask).shape == (32, kept)


def test_crop_rates_match_the_method_table():
    rates = [round(100 * effective_mask_rate(CropMask(crop_size=c), GRID), 1) for c in (15, 11, 5)]
    assert rates == [12.1, 52.7, 90.2]


ALL = [
    PatchMask(rate=0.75),
    BlockMask(rate=0.5, block_size=2),
    BlockMask(rate=0.9, block_size=4),
    CropMask(crop_size=7),
]


@pytest.mark.parametrize("mask", ALL, ids=lambda m: repr(m))
def test_indices_are_unique_sorted_and_in_range(mask):
    keep = draw(mask)
    assert keep.dtype == torch.int64
    assert keep.min() >= 0 and keep.max() < GRID * GRID
    assert torch.all(keep[:, 1:] > keep[:, :-1])  # strictly increasing: sorted and unique


@pytest.mark.parametrize("mask", ALL, ids=lambda m: repr(m))
def test_masks_differ_across_samples_and_repeat_for_a_seed(mask):
    keep = draw(mask, batch=16)
    distinct = {tuple(row.tolist()) for row in keep}
    assert len(distinct) > 8
    assert torch.equal(draw(mask, seed=3), draw(mask, seed=3))
    assert not torch.equal(draw(mask, seed=3), draw(mask, seed=4))


@pytest.mark.parametrize("b", [2, 4, 8])
def test_block_masks_keep_whole_aligned_blocks(b):
    keep = draw(BlockMask(rate=0.6, block_size=b), batch=8)
    for row in keep.tolist():
        kept = set(row)
        for idx in row:
            r0, c0 = (idx // GRID) // b * b, (idx % GRID) // b * b  # the block's top-left patch
            block = {(r0 + i) * GRID + c0 + j for i in range(b) for j in range(b)}
            assert block <= kept


def test_crop_keeps_one_square_window():
    keep = draw(CropMask(crop_size=5), batch=64)
    corners = set()
    for row in keep.tolist():
        rows, cols = [i // GRID for i in row], [i % GRID for i in row]
        r0, c0 = min(rows), min(cols)
        assert sorted(row) == [(r0 + i) * GRID + c0 + j for i in range(5) for j in range(5)]
        corners.add((r0, c0))
    assert len(corners) > 10  # windows move around
    assert max(r for r, _ in corners) <= GRID - 5


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: BlockMask(rate=0.5, block_size=3).keep_count(GRID), "does not divide"),
        (lambda: CropMask(crop_size=17).keep_count(GRID), "larger than"),
        (lambda: PatchMask(rate=1.0), "(?s)rate.*less than 1"),
        (lambda: PatchMask(rate=-0.1), "(?s)rate.*greater than or equal to 0"),
        (lambda: BlockMask(rate=1.5, block_size=2), "(?s)rate.*less than 1"),
        (lambda: BlockMask(rate=0.5, block_size=0), "(?s)block_size.*greater than or equal to 1"),
        (lambda: PatchMask(rate=0.5, block_size=2), "(?s)block_size.*Extra inputs"),
        (lambda: build_strategy("checkerboard", rate=0.5), "unknown mask strategy"),
    ],
)
def test_impossible_settings_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_registry_builds_each_strategy_by_its_spec_name():
    assert set(STRATEGIES) == {"patch", "block", "crop", "maskdit", "deferred", "routing", "sprint"}
    assert all(cls.name == name for name, cls in STRATEGIES.items())
    assert build_strategy("block", rate=0.9, block_size=4) == BlockMask(rate=0.9, block_size=4)
    assert build_strategy("crop", crop_size=11).keep_count(GRID) == 121
    assert PatchMask(0.5) == PatchMask(rate=0.5)  # positional arguments fill the knobs in order
