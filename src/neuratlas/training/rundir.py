"""Run folders: a run's name is a name (never a path out of ``trainer.out_dir``), default names never collide,
and an existing run is never silently overwritten: it is continued (``--resume``) or replaced on request
(``--trainer.overwrite true``)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from pathlib import Path

from neuratlas.errors import NeuratlasError

MAX_NAME = 120  # bytes; file systems allow 255, and the checkpoint names inside need room too
_ALLOWED = re.compile(r"^[\w.+@=-]+$")


def check_run_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a plain folder name."""
    if not name or name in (".", "..") or not _ALLOWED.match(name) or name.startswith("."):  # escape attempt
        raise ValueError(
            f"run_name must be a plain name (letters, digits, '_', '-', '.', '+', '@', '='; no "
            f"'/', no leading '.'), got {name!r}"
        )
    if len(name.encode()) > MAX_NAME:
        raise ValueError(f"run_name is {len(name.encode())} bytes long; at most {MAX_NAME} are allowed")


def default_run_name(model: str) -> str:
    """``<model>-<date>-<time>-<6 hex>``: two runs started in the same second get different folders. The
    processes of one distributed run share the name (the rendezvous' port and start second make it)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        suffix = f"p{os.environ.get('MASTER_PORT', '0')}"
    else:
        suffix = secrets.token_hex(3)
    return f"{model}-{stamp}-{suffix}"


def prepare_run_dir(run_dir: Path, resumed: bool, overwrite: bool, main: bool = True) -> None:
    """Create ``run_dir`` for a new run, refusing one that already holds a run unless ``overwrite`` (then
    it is emptied first, so no checkpoint of the old run can be taken for one of the new)."""
    if main and not resumed and run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise NeuratlasError(
                f"run folder {run_dir} already exists; continue it with --resume {run_dir}, "
                "replace it with --trainer.overwrite true, or choose another "
                "--trainer.run_name"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
