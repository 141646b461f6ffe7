"""The ``quamba`` console command: one subcommand per module in ``COMMANDS``.

Each command module exposes ``add_parser(subparsers)`` and ``run(args) -> int``. Errors a user can
cause (``QuambaError``) become one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import QuambaError

COMMANDS = ["generate", "info", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quamba", description="Quantize, evaluate, benchmark and run Mamba LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"quamba.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except QuambaError as e:
        print(f"quamba {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
