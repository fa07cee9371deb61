"""The ``neuratlas`` command. Each module in this package adds subcommands through ``register(sub)``, each
described by typed dataclasses and read by one parser (``cli/options.py``); user errors print as one
``error:`` line (exit 2), never a traceback."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import typing

from neuratlas import __version__
from neuratlas.cli.options import run as run_command
from neuratlas.cli.options import subcommands
from neuratlas.errors import NeuratlasError

ORDER = ["core", "visualize", "tour"]  # these first in --help; the rest alphabetically


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one ``error:`` line like every other user error."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="neuratlas",
        description="Neuratlas: every modern neural-network family, one registry, one trainer, one CLI.",
        epilog="Examples:\n  neuratlas list 'resnet*'\n  neuratlas train convnet-fashion-quick --optimizer.lr 3e-3\n"
        "  neuratlas eval runs/convnet-...\n  neuratlas tour",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"neuratlas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    for name in sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        module = importlib.import_module(f"{__name__}.{name}")
        if hasattr(module, "register"):  # options.py is the parser, not a command
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    name = next((a for a in argv if not a.startswith("-")), None)
    sub = subcommands(parser).get(name) if name else None
    command = sub.get_default("_command") if sub else None
    try:
        if command is not None:  # the one dialect: cli/options.py reads everything after the name
            return run_command(command, argv[argv.index(name) + 1 :])
        parser.parse_args(argv)  # no command: --version, --help, or a one-line error
        parser.print_help()
        return 0
    except NeuratlasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `neuratlas list | head`: the reader is gone, nothing left to say
        sys.stderr = open(os.devnull, "w")  # else Python reports the closed pipe again at exit
        return 0
    except Exception as e:  # an unexpected failure: one line unless debugging is asked for
        if os.environ.get("NEURATLAS_DEBUG"):
            raise
        print(f"error: unexpected {type(e).__name__}: {e} (set NEURATLAS_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
