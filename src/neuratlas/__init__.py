"""Neuratlas: the modern landscape of neural networks as readable, tested, fast PyTorch code."""

__version__ = "0.1.0"

from neuratlas.api import load_model, predict, train  # noqa: E402
from neuratlas.errors import NeuratlasError  # noqa: E402
from neuratlas.export import export_model  # noqa: E402
from neuratlas.models import create_model, list_models  # noqa: E402

__all__ = ["NeuratlasError", "__version__", "create_model", "export_model", "list_models", "load_model", "predict",
           "train"]
