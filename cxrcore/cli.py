"""Command-line entry: one subcommand per module in cxrcore/commands/.

Contract for every command: exit 0 on success, 1 when the command found a problem it was asked to
look for (e.g. leakage), 2 on invalid input with one clear line on stderr and never a traceback.
Each command module defines NAME, HELP, add_arguments(parser) and run(args) -> int, and imports
heavy libraries (TensorFlow, OpenCV, scikit-learn) inside run() so that `--help` and data-only
commands start fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from types import ModuleType

import cxrcore.commands
from cxrcore.errors import CxrError

EXIT_OK, EXIT_FOUND, EXIT_INVALID = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """Usage errors follow the contract too: exit 2 with one line on stderr (usage via --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_INVALID, f"error: {message} (see {self.prog} --help)\n")


def _command_modules() -> list[ModuleType]:
    modules = []
    for info in sorted(pkgutil.iter_modules(cxrcore.commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        modules.append(importlib.import_module(f"cxrcore.commands.{info.name}"))
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m cxrcore", description="Chest X-ray toolkit: audit, split, demo data, "
                     "training, evaluation and class activation maps.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for module in _command_modules():
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args))
    except CxrError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # not foreseen by the command: the file the system names, unless it is a temp file
        name = str(err.filename) if err.filename and not os.path.basename(str(err.filename)).startswith(".") else ""
        print(f"error: {name + ': ' if name else ''}{err.strerror or type(err).__name__}.", file=sys.stderr)
        return EXIT_INVALID
    except MemoryError:
        print("error: out of memory.", file=sys.stderr)
        return EXIT_INVALID
