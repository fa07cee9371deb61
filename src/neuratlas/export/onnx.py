"""ONNX through ``torch.onnx.export``'s dynamo path (opset 18+), checked in onnxruntime."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from neuratlas.errors import NeuratlasError
from neuratlas.export.check import Check, check
from neuratlas.export.parts import Inputs, Part
from neuratlas.export.trace import why


def _need():
    from neuratlas.extras import require

    for module in ("onnx", "onnxscript"):
        require(module, "ONNX export")
    return require("onnxruntime", "checking ONNX files")


def save(program: torch.export.ExportedProgram, part: Part, path: Path, model_name: str) -> None:
    _need()
    for logger in ("torch.onnx", "onnxscript", "onnx_ir"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    try:  # the exporter reports its steps on stdout and warns about optional ops (torchvision): keep quiet
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(
                program,
                (),
                dynamo=True,
                input_names=part.input_names,
                output_names=part.output_names,
                verbose=False,
                optimize=True,
            )
            onnx_program.save(str(path))
    except Exception as e:
        raise NeuratlasError(f"{model_name} ({part.name}) cannot be converted to ONNX: {why(e)}") from None


def providers(ort, device: torch.device | None) -> list:
    """onnxruntime's execution provider for ``device``: the CPU's, or CUDA's on that GPU (one line when this
    onnxruntime has none)."""
    if device is None or device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0})]
    if device.type == "cuda":
        raise NeuratlasError(
            f"--device {device}: this onnxruntime has no CUDA execution provider "
            "(pip install onnxruntime-gpu, or check the ONNX file on the cpu)"
        )
    raise NeuratlasError(f"--device {device}: ONNX files are checked in onnxruntime on the cpu or a CUDA GPU")


def verify(path: Path, part: Part, timing: bool = True, device: torch.device | None = None) -> Check:
    """Run the file in onnxruntime (on ``device``: the CPU, or a CUDA GPU) and compare it with the eager part
    on the same device; its inputs and outputs go through host memory."""
    ort = _need()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = torch.get_num_threads()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=providers(ort, device))
    names = [i.name for i in session.get_inputs()]

    def run(inputs: Inputs) -> list[torch.Tensor]:
        feed = {n: np.ascontiguousarray(t.detach().cpu().numpy()) for n, t in zip(names, inputs)}
        return [torch.from_numpy(np.asarray(o)) for o in session.run(None, feed)]

    return check(part, path.name, "onnxruntime", run, timing, device)
