"""Stop requests a scheduler sends: SIGTERM (Slurm, Kubernetes, ``timeout``, ``docker stop``) is handled as
Ctrl-C is, so the trainer saves a checkpoint and prints the resume command before the hard kill follows."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives; a KeyboardInterrupt, so every handler of Ctrl-C
    (the trainer's save, the CLI's exit status) handles it too."""


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (once: a second SIGTERM while the checkpoint is
    being written is ignored, so the save completes). Outside the main thread signals cannot be handled,
    and the block changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
