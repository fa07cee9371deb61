"""Models out of Neuratlas: ONNX, ``torch.export`` programs and Hugging Face folders, each checked against
the eager model (``neuratlas export RUN --format onnx|pt2|hf``)."""

from neuratlas.export.core import FORMATS, ExportResult, export_model, export_run

__all__ = ["FORMATS", "ExportResult", "export_model", "export_run"]
