"""The ``quamba`` console command: one subcommand per module in ``COMMANDS``.

Each command module exposes ``add_parser(subparsers)`` (which sets ``set_defaults(run=run)``) and
``run(args) -> int``. Errors a user can cause (``QuambaError``, bad arguments) become one line on
stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import QuambaError

COMMANDS = ["generate", "info", "bench", "eval", "quantize"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``<prog>: error: ...``, exit 2) instead of usage + error."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="quamba", description="Quantize, evaluate, benchmark and run Mamba LMs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"quamba.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed)
        return e.code if isinstance(e.code, int) else 2
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
