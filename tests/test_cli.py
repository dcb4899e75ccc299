"""The console script as a user calls it."""

import subprocess
import sys
from pathlib import Path

import maskdm_sweeps

SCRIPT = Path(sys.executable).with_name("maskdm-sweep")


def run(*args):
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True)


def test_help_lists_the_subcommands():
    out = run("--help")
    assert out.returncode == 0
    assert "version" in out.stdout and "train" in out.stdout


def test_version_subcommand_prints_the_package_version():
    out = run("version")
    assert out.returncode == 0
    assert out.stdout.startswith(f"maskdm-sweeps {maskdm_sweeps.__version__}")


def test_unknown_subcommand_exits_with_usage_error():
    out = run("frobnicate")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
