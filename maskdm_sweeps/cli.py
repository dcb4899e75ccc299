"""``maskdm-sweep``: the command line. Thin: parse, call the package, print."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _cmd_version(args: argparse.Namespace) -> int:
    import torch

    print(f"maskdm-sweeps {__version__} (torch {torch.__version__})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    demo.main(["--out", str(args.out)])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskdm-sweep",
        description="Declarative ablation sweeps for Masked Diffusion Models (MaskDM).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the package and torch versions").set_defaults(func=_cmd_version)
    demo = sub.add_parser("demo", help="a CPU tour of the method: pre-train, fine-tune, sample a PNG grid")
    demo.add_argument("--out", default="results/demo", help="output directory (default: %(default)s)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
