"""The ``neuratlas`` command. Each module in this package adds subcommands through ``register(sub)``;
user errors print as one ``error:`` line (exit 2), never a traceback."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from neuratlas.errors import NeuratlasError

ORDER = ["core", "visualize", "tour"]  # these first in --help; the rest alphabetically


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuratlas",
        description="Neuratlas: every modern neural-network family, one registry, one trainer, one CLI.",
        epilog="Examples:\n  neuratlas list 'resnet*'\n  neuratlas train convnet-fashion-quick --optimizer.lr 3e-3\n"
               "  neuratlas eval runs/convnet-...\n  neuratlas tour",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from neuratlas import __version__

    parser.add_argument("--version", action="version", version=f"neuratlas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    for name in sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args, extra) or 0
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
        print(f"error: unexpected {type(e).__name__}: {e} (set NEURATLAS_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
