"""Malformed specs: each exits with code 2 before anything starts, naming the field and the YAML line."""

import logging
import os

import pytest
from PIL import Image

from maskdm_sweeps.cli import main

SPEC = """\
name: bad-spec
base:
  data:
    name: digits
    image_size: 8
  model:
    preset: tiny
  mask:
    strategy: patch
    rate: 0.5
  pretrain:
    steps: 10
  finetune:
    steps: 10
  eval:
    num_samples: 0
    backend: digits-classifier
sweep:
  axes:
    mask.rate: [0.25, 0.5]
  seeds: [0, 1]
resources:
  gpus: 0
"""

CASES = {
    # id: (edit of SPEC, dotted field named in the message, line named in the message)
    "typo-in-a-key": (
        lambda s: s.replace("    steps: 10\n  finetune", "    stpes: 10\n  finetune"),
        "base.pretrain.stpes",
        12,
    ),
    "wrong-type": (lambda s: s.replace("    image_size: 8", "    image_size: large"), "base.data.image_size", 5),
    "rate-of-1.5": (lambda s: s.replace("    rate: 0.5", "    rate: 1.5"), "base.mask.rate", 10),
    "axis-rate-of-1.5": (lambda s: s.replace("[0.25, 0.5]", "[0.25, 1.5]"), "sweep.axes.mask.rate", 20),
    "block-does-not-divide-the-grid": (
        lambda s: s.replace(
            "    mask.rate: [0.25, 0.5]", "    mask:\n      - {strategy: block, rate: 0.5, block_size: 3}"
        ),
        "sweep.axes.mask",
        20,
    ),
    "missing-dataset": (
        lambda s: s.replace("    name: digits\n", "    name: cifar10\n    path: /nonexistent/cifar\n"),
        "base.data",
        3,
    ),
    "optuna-plus-grid": (
        lambda s: s.replace(
            "  seeds: [0, 1]",
            "  search:\n    method: optuna\n    num_samples: 4\n"
            "    space:\n      finetune.lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}",
        ),
        "sweep",
        18,
    ),
    "duplicate-axes": (
        lambda s: s.replace(
            "    mask.rate: [0.25, 0.5]", "    mask.rate: [0.25, 0.5]\n    mask: [{strategy: crop, crop_size: 2}]"
        ),
        "sweep",
        18,
    ),
    "duplicate-yaml-key": (lambda s: s.replace("  seeds: [0, 1]", "  seeds: [0, 1]\n  seeds: [2]"), "", 22),
    "empty-sweep-axis": (lambda s: s.replace("[0.25, 0.5]", "[]"), "sweep.axes", 19),
    "bad-yaml-syntax": (lambda s: s.replace("    rate: 0.5", "    rate: [0.5"), "", 11),
    "unknown-mask-strategy": (
        lambda s: s.replace("    strategy: patch", "    strategy: checkerboard"),
        "base.mask.strategy",
        9,
    ),
    "unknown-axis-key": (lambda s: s.replace("    mask.rate:", "    mask.rat:"), "sweep.axes.mask.rat", 20),
    "unknown-preset": (lambda s: s.replace("    preset: tiny", "    preset: uvit-huge"), "base.model", 6),
    # names the results root holds itself: a sweep there would collide with them
    "sweep-named-mlflow.db": (lambda s: s.replace("name: bad-spec", "name: mlflow.db"), "name", 1),
    "sweep-named-mlartifacts": (lambda s: s.replace("name: bad-spec", "name: mlartifacts"), "name", 1),
    # the knobs of the strategies beyond MaskDM's three
    "maskdit-without-a-decoder": (
        lambda s: s.replace(
            "    strategy: patch\n    rate: 0.5", "    strategy: maskdit\n    rate: 0.5\n    decoder_depth: 0"
        ),
        "base.mask.decoder_depth",
        11,
    ),
    "negative-mae-weight": (
        lambda s: s.replace("    strategy: patch\n    rate: 0.5", "    strategy: maskdit\n    mae_coef: -0.1"),
        "base.mask.mae_coef",
        10,
    ),
    "mixer-knob-typo": (
        lambda s: s.replace("    strategy: patch\n    rate: 0.5", "    strategy: deferred\n    mixr_depth: 2"),
        "base.mask.mixr_depth",
        10,
    ),
    "routing-past-the-in-blocks": (
        lambda s: s.replace(
            "    mask.rate: [0.25, 0.5]", "    mask:\n      - {strategy: routing, rate: 0.5, route_from: 3}"
        ),
        "sweep.axes.mask",
        20,
    ),
}


class Out:
    def __init__(self, returncode, captured):
        self.returncode, self.stdout, self.stderr = returncode, captured.out, captured.err


@pytest.fixture
def maskdm_sweep(capsys, monkeypatch):
    """The CLI in-process (the console script calls the same ``main``), run from a given directory."""

    def run(*args, cwd):
        monkeypatch.chdir(cwd)
        code = main(list(args))
        return Out(code, capsys.readouterr())

    return run


def test_the_unedited_spec_is_valid(tmp_path, maskdm_sweep):
    (tmp_path / "spec.yaml").write_text(SPEC)
    out = maskdm_sweep("validate", "spec.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "4 trials, 4 shared pre-trainings" in out.stdout  # the seed is part of pre-training


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_malformed_spec_exits_2_naming_field_and_line_and_starts_nothing(tmp_path, case, command, maskdm_sweep):
    import ray

    edit, field, line = CASES[case]
    text = edit(SPEC)
    assert text != SPEC, "the edit must change the spec"
    (tmp_path / "spec.yaml").write_text(text)
    out = maskdm_sweep(command, "spec.yaml", cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert f"spec.yaml:{line})" in out.stderr, out.stderr
    if field:
        assert f"\n{field}: " in out.stderr or out.stderr.splitlines()[1].startswith(f"{field}: "), out.stderr
    # nothing started: no sweep directory, no MLflow store, no Ray
    assert not (tmp_path / "results").exists()
    assert not ray.is_initialized()


@pytest.mark.timeout(60, method="thread")  # a FIFO opened in a decoding thread blocks it: end the whole run
def test_an_image_folder_holding_a_fifo_exits_2_naming_it_without_opening_it(
    tmp_path, maskdm_sweep, caplog, monkeypatch
):
    monkeypatch.setenv("MASKDM_CACHE", str(tmp_path / "cache"))  # where the verdicts of the decoding are kept
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(images / "a.png")
    os.mkfifo(images / "hang.png")  # opening it blocks until something writes to it
    (tmp_path / "spec.yaml").write_text(
        SPEC.replace("    name: digits\n", f"    name: image_folder\n    path: {images}\n")
    )
    out = maskdm_sweep("validate", "spec.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "spec.yaml:3)" in out.stderr and "\nbase.data: " in out.stderr, out.stderr
    assert "hang.png: a FIFO, not a regular file" in out.stderr and "skip_unreadable" in out.stderr
    with caplog.at_level(logging.WARNING, logger="maskdm_sweeps"):
        out = maskdm_sweep("validate", "spec.yaml", "--set", "base.data.skip_unreadable=true", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert caplog.text.count("skipping 1 unreadable image file(s) of 2") == 1 and "hang.png: a FIFO" in caplog.text


def test_set_overrides_are_validated_the_same_way(tmp_path, maskdm_sweep):
    (tmp_path / "spec.yaml").write_text(SPEC)
    out = maskdm_sweep("validate", "spec.yaml", "--set", "base.finetune.lr=-1", cwd=tmp_path)
    assert out.returncode == 2
    assert "base.finetune.lr: " in out.stderr and "(--set)" in out.stderr


# ------------------------------------------------------------------------------------ inputs that are not specs
def _alias_bomb() -> str:
    lines = ['a0: ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: [{', '.join([f'*a{i - 1}'] * 9)}]".replace(f"a{i}: [", f"a{i}: &a{i} [") for i in range(1, 10)]
    return "\n".join(lines).replace("a0: [", "a0: &a0 [") + "\n"


HOSTILE = {
    # id: (file content as bytes, or a function of tmp_path writing it; words the message must hold)
    "binary-file": (bytes(range(256)) * 4, "not a UTF-8 text file"),
    "deep-nesting": (("[" * 10_000 + "]" * 10_000).encode(), "nested"),
    "alias-bomb": (_alias_bomb().encode(), "expands to more than"),
    "20-MB-spec": (b"name: big\n" + b"# padding\n" * 2_000_000, "a spec is a few kilobytes"),
    "infinite-lr": (
        SPEC.replace("  finetune:\n    steps: 10", "  finetune:\n    steps: 10\n    lr: .inf").encode(),
        "base.finetune.lr",
    ),
    "1e15-steps": (
        SPEC.replace("  finetune:\n    steps: 10", "  finetune:\n    steps: 1.0e+15").encode(),
        "base.finetune.steps",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_inputs_exit_2_with_the_reason(case, tmp_path, capsys):
    content, words = HOSTILE[case]
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err


def test_an_output_dir_that_is_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    path = tmp_path / "spec.yaml"
    for output_dir in ("taken", "taken/results"):
        path.write_text(SPEC + f"output_dir: {tmp_path / output_dir}\n")
        assert main(["validate", str(path)]) == 2
        err = capsys.readouterr().err
        assert "output_dir" in err and "a file, not a directory" in err, err
