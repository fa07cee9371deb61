"""Tasks (objectives): each owns data, loss and metrics. Every module here is imported so tasks register."""

import importlib
import pkgutil

from neuratlas.tasks.base import TASKS, Task, build_task

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["TASKS", "Task", "build_task"]
