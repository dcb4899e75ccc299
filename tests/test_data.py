"""Datasets: the config validates early, loaders give exact uint8 pixels, caches and subsets are deterministic,
and training batches depend on nothing but the caller's generator state."""

import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pydantic import ValidationError

from maskdm_sweeps.data import (
    DATASETS,
    DataConfig,
    DataError,
    ImageBatches,
    load_dataset,
    load_digits_images,
    subset_indices,
    to_float,
    to_uint8,
)
from maskdm_sweeps.data.cifar10 import UnsafeBatchFile, load_cifar10
from maskdm_sweeps.data.image_folder import list_image_files
from maskdm_sweeps.testing import tiny_sweep_spec, write_png_with_a_broken_stream

DIGIT_LEVELS = {round(v * 255 / 16) for v in range(17)}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MASKDM_CACHE", str(cache))
    return cache


def rows(images: torch.Tensor) -> list[bytes]:
    return sorted(bytes(img.numpy().tobytes()) for img in images)


# ---------------------------------------------------------------- registry and config


def test_registry_covers_exactly_the_names_the_config_accepts():
    assert set(DATASETS) == set(get_args(DataConfig.model_fields["name"].annotation))


def test_every_config_field_is_documented():
    assert all(field.description for field in DataConfig.model_fields.values())


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"image_size": 16, "colour": "red"}, ["colour"]),
        ({"name": "image_folder", "image_size": 16}, ["path"]),
        ({"name": "cifar10"}, ["path"]),
        ({"fraction": 0.0}, ["fraction"]),
        ({"fraction": 1.5}, ["fraction"]),
        ({"max_images": 0}, ["max_images"]),
        ({"image_size": 4}, ["image_size"]),
        ({"path": "/somewhere"}, ["digits", "path"]),
        ({"crop": "celeba64"}, ["crop"]),
        ({"download": True}, ["download"]),
    ],
)
def test_config_rejects_bad_settings(kwargs, words):
    with pytest.raises(ValidationError) as err:
        DataConfig(**kwargs)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_missing_or_empty_paths_fail_at_validation_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("no images here")
    for cfg in (
        {"name": "image_folder", "path": missing, "image_size": 16},
        {"name": "image_folder", "path": empty, "image_size": 16},
        {"name": "cifar10", "path": missing},
        {"name": "cifar10", "path": empty},
    ):
        with pytest.raises(ValidationError) as err:
            DataConfig(**cfg)
        assert str(cfg["path"]) in str(err.value)
    # download=True is what fills a missing cifar10 directory, so it validates (nothing is fetched here)
    assert DataConfig(name="cifar10", path=missing, download=True).image_size == 32


def test_image_folder_needs_a_size_and_has_no_test_split(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(ValidationError, match="image_size"):
        DataConfig(name="image_folder", path=tmp_path)
    with pytest.raises(ValidationError, match="train"):
        DataConfig(name="image_folder", path=tmp_path, image_size=8, split="test")


# ---------------------------------------------------------------- digits


def test_digits_split_is_a_fixed_stratified_partition_with_17_grey_levels():
    from sklearn.datasets import load_digits

    train = load_dataset(DataConfig(image_size=8))
    test = load_dataset(DataConfig(image_size=8, split="test"))
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and (train.channels, train.image_size, train.num_images) == (1, 8, 1437)
    assert set(train.images.unique().tolist()) == DIGIT_LEVELS
    everything = torch.from_numpy(np.round(load_digits().images * 255 / 16).astype(np.uint8)).unsqueeze(1)
    assert rows(torch.cat([train.images, test.images])) == rows(everything)  # a partition of all 1797 digits
    again = load_dataset(DataConfig(image_size=8))
    assert torch.equal(again.images, train.images) and again.key == train.key
    assert train.key != test.key


def test_digits_resize_to_the_default_16_and_keep_the_legacy_float_loader():
    data = load_dataset(DataConfig())
    assert data.images.shape == (1437, 1, 16, 16) and data.images.dtype == torch.uint8
    assert data.images.max() == 255 and data.images.min() == 0
    assert len(set(data.images.unique().tolist()) - DIGIT_LEVELS) > 0  # bilinear resizing made in-between values
    images, labels = load_digits_images(8)
    assert images.shape == (1797, 1, 8, 8) and labels.shape == (1797,)
    assert images.min() == -1 and images.max() == 1


# ---------------------------------------------------------------- cifar10


def write_cifar(root: Path, counts: dict[str, int]) -> dict[str, np.ndarray]:
    """Pickled batches in the official format; pixel value = a function of (image, channel, y, x)."""
    root.mkdir(parents=True, exist_ok=True)
    written, start = {}, 0
    for name, n in counts.items():
        i, c, y, x = np.meshgrid(np.arange(start, start + n), np.arange(3), np.arange(32), np.arange(32), indexing="ij")
        data = ((i * 37 + c * 80 + y * 5 + x * 3) % 256).astype(np.uint8)  # (n, 3, 32, 32)
        rows_ = data.reshape(n, 3072)  # CHW flattening: the official row layout
        with open(root / name, "wb") as f:
            pickle.dump({b"data": rows_, b"labels": list(range(n)), b"batch_label": name.encode()}, f)
        written[name], start = data, start + n
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": []}))
    return written


def test_cifar10_reads_the_pickle_batches_in_chw_order(tmp_path):
    written = write_cifar(tmp_path / "cifar-10-batches-py", {"data_batch_1": 3, "data_batch_2": 2, "test_batch": 4})
    train = load_dataset(DataConfig(name="cifar10", path=tmp_path))
    assert train.images.shape == (5, 3, 32, 32) and train.images.dtype == torch.uint8
    expected = np.concatenate([written["data_batch_1"], written["data_batch_2"]])
    assert np.array_equal(train.images.numpy(), expected)
    # spot-check the layout by hand: image 4, green channel, row 2, column 7
    assert train.images[4, 1, 2, 7].item() == (4 * 37 + 80 + 10 + 21) % 256
    # the batches directory itself works too, and names the same files
    direct = load_dataset(DataConfig(name="cifar10", path=tmp_path / "cifar-10-batches-py"))
    assert torch.equal(direct.images, train.images)
    test = load_dataset(DataConfig(name="cifar10", path=tmp_path, split="test", image_size=16))
    assert test.images.shape == (4, 3, 16, 16) and test.key != train.key


def test_cifar10_without_the_requested_split_fails_at_validation(tmp_path):
    write_cifar(tmp_path, {"data_batch_1": 2})
    with pytest.raises(ValidationError) as err:
        DataConfig(name="cifar10", path=tmp_path, split="test")
    assert str(tmp_path) in str(err.value)


class _WritesAFile:
    """Unpickling this runs ``open(path, "w")``: what a crafted batch file could do with any callable."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_batches_of_every_pickle_protocol_numpy_writes_still_load(tmp_path, protocol):
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    (tmp_path / "data_batch_1").write_bytes(
        pickle.dumps({b"data": data, b"labels": [0, 1], b"filenames": [b"a.png", b"b.png"]}, protocol=protocol)
    )
    images = load_dataset(DataConfig(name="cifar10", path=tmp_path)).images
    assert np.array_equal(images.numpy().reshape(2, 3072), data)


def test_a_crafted_cifar10_batch_is_refused_by_validate_and_runs_nothing(tmp_path):
    batches = tmp_path / "cifar-10-batches-py"
    write_cifar(batches, {"data_batch_1": 2})
    marker = tmp_path / "pwned"
    (batches / "data_batch_1").write_bytes(pickle.dumps({b"data": _WritesAFile(str(marker)), b"labels": [0]}))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            tiny_sweep_spec("c", tmp_path / "out", data={"name": "cifar10", "path": str(tmp_path), "image_size": None})
        )
    )  # None: the data set's own size
    run = subprocess.run(
        [sys.executable, "-m", "maskdm_sweeps.cli", "validate", str(spec)], capture_output=True, text=True
    )
    assert run.returncode == 2 and "base.data" in run.stderr and "data_batch_1" in run.stderr, run.stderr
    assert "references io.open" in run.stderr and not marker.exists()  # the callable, named, never called
    with pytest.raises(UnsafeBatchFile, match="data_batch_1"):  # and the trainer's loader refuses it alike
        load_cifar10(tmp_path)
    assert not marker.exists()


# ---------------------------------------------------------------- image folders


def solid(colour, size=(20, 20)) -> Image.Image:
    return Image.new("RGB", size, colour)


def make_folder(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    wide = Image.new("RGB", (40, 20), (255, 0, 0))  # red | green | blue thirds: the centre square is all green
    wide.paste((0, 255, 0), (10, 0, 30, 20))
    wide.paste((0, 0, 255), (30, 0, 40, 20))
    wide.save(root / "a_wide.png")
    solid((200, 200, 200)).save(root / "sub" / "b.jpg", quality=95)
    solid((10, 20, 30)).save(root / "c.BMP")
    solid((50, 60, 70), (16, 30)).convert("L").save(root / "d_grey.png")  # greyscale -> RGB
    (root / "notes.txt").write_text("not an image")


def test_image_folder_loads_sorted_rgb_center_crops(tmp_path):
    make_folder(tmp_path / "imgs")
    data = load_dataset(DataConfig(name="image_folder", path=tmp_path / "imgs", image_size=8))
    assert data.images.shape == (4, 3, 8, 8) and data.images.dtype == torch.uint8
    assert (data.images[0].permute(1, 2, 0) == torch.tensor([0, 255, 0], dtype=torch.uint8)).all()
    # order: a_wide.png, c.BMP, d_grey.png, sub/b.jpg (sorted relative paths; notes.txt ignored)
    assert torch.equal(data.images[1], torch.tensor([10, 20, 30], dtype=torch.uint8)[:, None, None].expand(3, 8, 8))
    means = data.images.float().mean(dim=(2, 3))  # (4, 3)
    assert torch.allclose(means[2], means[2, :1].expand(3))  # grey made RGB: three equal channels
    assert torch.allclose(means[3], torch.tensor([200.0, 200, 200]), atol=3)  # sub/b.jpg (lossy)


def test_celeba64_crop_takes_the_128px_box_at_x89_y121(tmp_path):
    face = Image.new("RGB", (178, 218), (0, 0, 0))
    face.paste((255, 0, 0), (25, 57, 89, 121))  # the top-left quadrant of the crop box, in red
    face.paste((0, 255, 0), (0, 0, 178, 57))  # green everywhere above the box ...
    face.paste((0, 255, 0), (153, 0, 178, 218))  # ... and right of it: must never show
    face.paste((0, 0, 255), (0, 185, 178, 218))  # blue below it
    face.save(tmp_path / "000001.png")
    img = load_dataset(DataConfig(name="image_folder", path=tmp_path, image_size=16, crop="celeba64")).images[0]
    red = torch.tensor([255, 0, 0], dtype=torch.uint8)[:, None, None]
    assert (img[:, :6, :6] == red).all()  # the quadrant lands top-left (pixels clear of the bicubic edge)
    assert (img[:, 10:, 10:] == 0).all()  # the rest of the box is black
    assert img[1].max() == 0 and img[2].max() == 0  # nothing from outside the box leaks in


def test_celeba64_crop_refuses_images_that_are_not_aligned_celeba(tmp_path):
    solid((0, 0, 0), (64, 64)).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match=r"odd\.png"):
        load_dataset(DataConfig(name="image_folder", path=tmp_path, image_size=16, crop="celeba64"))


def test_image_folder_is_cached_and_a_changed_file_invalidates_it(tmp_path, monkeypatch, private_cache):
    make_folder(tmp_path / "imgs")
    cfg = DataConfig(name="image_folder", path=tmp_path / "imgs", image_size=8)
    first = load_dataset(cfg)
    assert len(list((private_cache / "image_folder").glob("*.npy"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an image although the cache is valid")

    changed = tmp_path / "imgs" / "c.BMP"
    with monkeypatch.context() as patch:
        patch.setattr(Image, "open", no_decoding)
        cached = load_dataset(cfg)
        assert torch.equal(cached.images, first.images) and cached.key == first.key
        solid((99, 99, 99)).save(changed)
        os.utime(changed, ns=(10**18, 10**18))  # a certainly different mtime, whatever the filesystem's resolution
        with pytest.raises(DataError, match="decoded an image"):  # the patched decoder's error, file named
            load_dataset(cfg)  # the key changed, so it must decode again
    fresh = load_dataset(DataConfig(name="image_folder", path=tmp_path / "imgs", image_size=8))
    assert fresh.key != first.key
    assert (fresh.images[1] == 99).all() and torch.equal(fresh.images[0], first.images[0])


# ---------------------------------------------------------------- subsets


def test_subsets_are_deterministic_nested_and_of_the_right_size():
    full = load_dataset(DataConfig(image_size=8)).images
    tenth = load_dataset(DataConfig(image_size=8, fraction=0.1))
    assert tenth.num_images == 143  # floor(0.1 * 1437)
    assert torch.equal(tenth.images, full[torch.from_numpy(subset_indices(1437, 0.1, None, 0))])
    assert torch.equal(load_dataset(DataConfig(image_size=8, fraction=0.1)).images, tenth.images)
    capped = load_dataset(DataConfig(image_size=8, fraction=0.1, max_images=10))
    assert capped.num_images == 10
    assert set(subset_indices(1437, 0.1, 10, 0)) <= set(subset_indices(1437, 0.1, None, 0))
    other_seed = load_dataset(DataConfig(image_size=8, fraction=0.1, subset_seed=1))
    assert not torch.equal(other_seed.images, tenth.images)
    assert len({tenth.key, capped.key, other_seed.key, load_dataset(DataConfig(image_size=8)).key}) == 4
    # a cap above the size selects everything: the same images, so the same key
    assert load_dataset(DataConfig(image_size=8, max_images=10**6)).key == load_dataset(DataConfig(image_size=8)).key
    assert subset_indices(100, 0.29, None, 0).shape == (29,)  # no float floor surprises
    assert subset_indices(10, 0.01, None, 0).shape == (1,)  # never empty


# ---------------------------------------------------------------- batches


def half_white(n: int = 32) -> torch.Tensor:
    """uint8 (n, 3, 8, 8) images, black on the left half, white on the right: a flip is visible."""
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    images[..., 4:] = 255
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)  # tell the images apart
    return images


def test_batches_depend_only_on_the_generator_state():
    batches = ImageBatches(load_dataset(DataConfig(image_size=8)).images)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    a = batches.batch(64, g)
    b = batches.batch(64, g)
    g.set_state(state)
    assert torch.equal(batches.batch(64, g), a)
    assert not torch.equal(a, b)
    assert a.shape == (64, 1, 8, 8) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1 and a.min() == -1 and a.max() == 1
    fresh = ImageBatches(load_dataset(DataConfig(image_size=8)).images)
    assert torch.equal(fresh.batch(64, torch.Generator().manual_seed(0)), a)


@pytest.mark.parametrize("hflip", [False, True])
def test_flips_happen_only_when_enabled(hflip):
    batches = ImageBatches(half_white(), hflip=hflip)
    x = batches.batch(256, torch.Generator().manual_seed(0))
    flipped = x[:, 1, 4, 0] == 1  # white on the left
    if hflip:
        assert 0.3 < flipped.float().mean() < 0.7
    else:
        assert not flipped.any()
    # whatever was drawn is a dataset image (flipped or not), converted exactly
    originals = to_float(half_white())
    for img in x[:16]:
        assert any(torch.equal(img, o) or torch.equal(img, o.flip(-1)) for o in originals)


def test_uint8_float_conversions_round_trip_and_clip():
    u = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    f = to_float(u)
    assert f.min() == -1 and f.max() == 1
    assert torch.equal(to_uint8(f), u)
    assert to_uint8(torch.tensor([-3.0, 1.5, 0.0])).tolist() == [0, 255, 128]


def test_batches_refuse_float_images():
    with pytest.raises(TypeError):
        ImageBatches(torch.zeros(4, 1, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_large_sets_stay_in_pinned_host_memory_and_give_the_same_batches():
    images = half_white(64)
    on_gpu = ImageBatches(images, device="cuda", hflip=True)
    pinned = ImageBatches(images, device="cuda", hflip=True, max_device_bytes=0)
    assert on_gpu.on_device and not pinned.on_device and pinned.images.is_pinned()
    a = on_gpu.batch(32, torch.Generator().manual_seed(3))
    b = pinned.batch(32, torch.Generator().manual_seed(3))
    assert a.device.type == "cuda" and b.device.type == "cuda" and torch.equal(a, b)


def test_images_held_on_a_device_named_without_its_index_are_on_the_device():
    """'cuda' and 'cuda:0' name one device: a batch store must take the on-device path for both (the GPU trainer
    failed when it did not). 'cpu:0' vs 'cpu' shows the same comparison on any machine."""
    from maskdm_sweeps.data import ImageBatches

    store = ImageBatches(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), device="cpu:0")
    assert store.on_device
    assert store.batch(3, torch.Generator().manual_seed(0)).shape == (3, 1, 8, 8)


def test_unreadable_images_are_named_at_validation_or_skipped_with_a_count_when_asked(tmp_path, caplog):
    make_folder(tmp_path)
    good = len(list_image_files(tmp_path))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)  # a corrupt png
    os.symlink(tmp_path / "loop_b.jpg", tmp_path / "loop_a.jpg")  # two links pointing at each other
    os.symlink(tmp_path / "loop_a.jpg", tmp_path / "loop_b.jpg")
    with pytest.raises(ValidationError) as err:
        DataConfig(name="image_folder", path=tmp_path, image_size=8)
    message = str(err.value)
    assert "3 unreadable image file(s)" in message and "broken.png" in message and "loop_a.jpg" in message
    assert "skip_unreadable" in message
    cfg = DataConfig(name="image_folder", path=tmp_path, image_size=8, skip_unreadable=True)
    with caplog.at_level(logging.WARNING, logger="maskdm_sweeps"):
        data = load_dataset(cfg)
    assert f"skipping 3 unreadable image file(s) of {good + 3}" in caplog.text and "broken.png" in caplog.text
    assert data.images.shape == (good, 3, 8, 8)  # the readable ones, decoded as before


def test_a_png_whose_pixels_do_not_decode_is_named_at_validation_and_by_the_loader(tmp_path):
    make_folder(tmp_path)
    cfg = DataConfig(name="image_folder", path=tmp_path, image_size=8)  # valid before the bad file comes
    write_png_with_a_broken_stream(tmp_path / "zz_broken_stream.png")
    with Image.open(tmp_path / "zz_broken_stream.png") as im:
        im.verify()  # what validation used to stop at: the CRCs are fine
    with pytest.raises(ValidationError, match=r"1 unreadable image file.*zz_broken_stream\.png"):
        DataConfig(name="image_folder", path=tmp_path, image_size=8)
    with pytest.raises(DataError, match=r"zz_broken_stream\.png does not decode"):  # a trial names it alike
        load_dataset(cfg)


@pytest.mark.timeout(60, method="thread")  # a FIFO opened in a decoding thread blocks it: end the whole run
def test_a_fifo_among_the_images_is_skipped_or_refused_without_being_opened(tmp_path, caplog):
    make_folder(tmp_path)
    good = len(list_image_files(tmp_path))
    strict = DataConfig(name="image_folder", path=tmp_path, image_size=8)  # valid before the FIFO comes
    os.mkfifo(tmp_path / "hang.png")  # opening it would block until something writes to it
    with caplog.at_level(logging.WARNING, logger="maskdm_sweeps"):
        data = load_dataset(DataConfig(name="image_folder", path=tmp_path, image_size=8, skip_unreadable=True))
    assert data.images.shape == (good, 3, 8, 8)
    assert "skipping 1 unreadable image file(s)" in caplog.text and "hang.png: a FIFO" in caplog.text
    with pytest.raises(DataError, match=r"hang\.png: a FIFO, not a regular file"):
        load_dataset(strict)  # a FIFO that appears after validation: named, never opened


def test_every_cifar10_batch_is_checked_at_validation_not_only_the_first(tmp_path):
    write_cifar(tmp_path, {"data_batch_1": 2, "data_batch_2": 2, "data_batch_3": 2})
    marker = tmp_path / "pwned"
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps({b"data": _WritesAFile(str(marker)), b"labels": [0]}))
    with pytest.raises(ValidationError, match=r"data_batch_2: it references io\.open"):
        DataConfig(name="cifar10", path=tmp_path)
    assert not marker.exists()
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0]}))
    with pytest.raises(ValidationError, match=r"data_batch_2 is not a CIFAR-10 batch file.*3000"):
        DataConfig(name="cifar10", path=tmp_path)
