"""What each family exports: the graphs ("parts") of a model, their tensor inputs, outputs and dynamic axes.

Deployment runtimes see tensors only, so every part is a small module that takes and returns tensors:
the model's own forward where it already does (classifiers, U-Net, GPT's logits), a thin adapter where the
Python API takes objects or returns a named tuple (a detector's boxes and scores before NMS, a GNN's
edge list instead of a ``Graph``, CLIP's two encoders as two graphs, GPT's decoding step with the past keys
and values as explicit inputs and outputs). Every adapter calls the model's own layers, so an exported
graph computes exactly what the eager model computes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuratlas.errors import NeuratlasError

Inputs = tuple[torch.Tensor, ...]


@dataclass
class Part:
    """One exported graph: ``module(*inputs)`` with named inputs/outputs and the axes that may vary."""

    name: str  # file stem: model, image_encoder, text_encoder, decoder_with_past
    module: nn.Module
    inputs: Inputs
    input_names: list[str]
    output_names: list[str]
    dynamic: list[dict[int, str]]  # per input: axis -> dimension name (batch, sequence, nodes, ...)
    notes: list[str] = field(default_factory=list)

    def dynamic_shapes(self) -> tuple[dict[int, Any], ...]:
        dims: dict[str, Any] = {}
        out = []
        for axes in self.dynamic:
            spec = {}
            for axis, name in axes.items():
                if name not in dims:
                    dims[name] = torch.export.Dim.DYNAMIC
                spec[axis] = dims[name]
            out.append(spec)
        return (tuple(out),) if isinstance(self.module, _Call) else tuple(out)  # _Call takes *inputs


class _Call(nn.Module):
    """A tensors-in, tensors-out view of ``model`` through ``fn(model, *inputs)``."""

    def __init__(self, model: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.fn(self.model, *inputs)


BATCH = {0: "batch"}
TOKENS = {0: "batch", 1: "sequence"}


def parts(model: nn.Module, example: Inputs | None = None) -> list[Part]:
    """The parts of ``model`` with ``example`` inputs (the arguments of ``model.forward``; by default the
    model's ``dummy_input()``). Raises NeuratlasError for a model that has no tensor form."""
    from neuratlas.models.bert import BERT
    from neuratlas.models.clip import CLIP
    from neuratlas.models.detection import Detector
    from neuratlas.models.gnn import GNN
    from neuratlas.models.gpt import GPT
    from neuratlas.models.rnn import RNNClassifier, RNNForecaster, RNNLanguageModel
    from neuratlas.models.unet import UNet

    if example is None:
        if not hasattr(model, "dummy_input"):
            raise NeuratlasError(f"{type(model).__name__} has no example input to trace; pass one")
        example = model.dummy_input(2)
    example = example if isinstance(example, tuple) else (example,)
    name = getattr(model, "model_name", type(model).__name__)
    if isinstance(model, GPT):
        return _gpt_parts(model, example[0])
    if isinstance(model, CLIP):
        images, ids = example[0], example[1]
        return [
            Part(
                "image_encoder",
                _Call(model, lambda m, x: m.encode_image(x)),
                (images,),
                ["images"],
                ["image_embeds"],
                [BATCH],
                ["L2-normalised; logits = exp(logit_scale) · image · textᵀ"],
            ),
            Part(
                "text_encoder",
                _Call(model, lambda m, i: m.encode_text(i)),
                (ids,),
                ["input_ids"],
                ["text_embeds"],
                [TOKENS],
                [f"captions padded with token {model.cfg.pad_id}"],
            ),
        ]
    if isinstance(model, BERT):
        ids = example[0]
        mask = example[1] if len(example) > 1 and example[1] is not None else torch.ones_like(ids)
        out = "logits" if model.cfg.num_classes else "mlm_logits"
        return [
            Part(
                "model",
                _Call(model, lambda m, i, a: m(i, a)),
                (ids, mask.to(ids.dtype)),
                ["input_ids", "attention_mask"],
                [out],
                [TOKENS, TOKENS],
            )
        ]
    if isinstance(model, Detector):
        note = (
            "scores = sqrt(sigmoid(class logit) · sigmoid(centre-ness))"
            if model.ctr_out is not None
            else "scores = sigmoid(class logit)"
        )
        return [
            Part(
                "model",
                _Call(model, _detector_outputs),
                example[:1],
                ["images"],
                ["boxes", "scores"],
                [BATCH],
                [
                    f"boxes (B, N, 4) xyxy pixels and {note} (B, N, K) for every location, before "
                    f"non-maximum suppression: keep scores > 0.05, the top 1000, then class-wise "
                    f"NMS at IoU {0.5} (torchvision.ops.batched_nms or ONNX NonMaxSuppression)"
                ],
            )
        ]
    if isinstance(model, GNN):
        if model.head is not None:
            raise NeuratlasError(
                f"{name}: a graph-level GNN pools per graph with a data-dependent graph count "
                "(scatter over batch.max() + 1 graphs); only node-level GNNs export"
            )
        x, graph = example[0], example[1]
        return [
            Part(
                "model",
                _Call(model, _gnn_forward),
                (x, graph.edge_index),
                ["x", "edge_index"],
                ["logits"],
                [{0: "nodes"}, {1: "edges"}],
                ["edge_index (2, E) int64: messages flow row 0 -> row 1"],
            )
        ]
    if isinstance(model, (RNNClassifier, RNNForecaster, RNNLanguageModel)):
        # torch.export (2.13) specialises aten.lstm/gru/rnn to the traced number of steps, so the length is
        # fixed (as a forecaster's lookback is); a classifier pads shorter sequences with token 0 at the end
        out = "forecasts" if isinstance(model, RNNForecaster) else "logits"
        notes = [f"sequence length fixed at {example[0].shape[1]}"]
        if isinstance(model, RNNClassifier) and model.embed is not None:
            notes.append("token id 0 is padding (at the end of each sequence)")
        return [Part("model", model, example[:1], ["inputs"], [out], [BATCH], notes)]
    if isinstance(model, UNet):
        return [Part("model", model, example[:1], ["images"], ["logits"], [BATCH])]
    if not all(isinstance(t, torch.Tensor) for t in example):
        raise NeuratlasError(
            f"{name}: its forward takes {', '.join(type(t).__name__ for t in example)}; only tensor inputs export"
        )
    names = ["inputs"] if len(example) == 1 else [f"input_{i}" for i in range(len(example))]
    return [Part("model", model, example, names, ["outputs"], [BATCH] * len(example))]


def _detector_outputs(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(images)
    return out.boxes, model.scores(out)


def _gnn_forward(model: nn.Module, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    from neuratlas.data.graphs import Graph

    return model(x, Graph(edge_index, x.shape[0]))


# --- GPT: logits, and a decoding step with the past keys and values ---------------------------------------


class _PastCache:
    """The :class:`~neuratlas.layers.attention.KVCache` interface over explicit past tensors: each layer's new
    keys/values are appended with a concatenation (a graph op) instead of written into a preallocated buffer,
    so the exported graph takes ``past_keys``/``past_values`` and returns the ``present`` ones."""

    def __init__(self, past_k: torch.Tensor | None, past_v: torch.Tensor | None) -> None:
        self.past_k, self.past_v = past_k, past_v
        self.length = past_k.shape[3] if past_k is not None else 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.cross: dict = {}

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.past_k is not None:
            k, v = torch.cat([self.past_k[layer], k], 2), torch.cat([self.past_v[layer], v], 2)
        self.keys.append(k)
        self.values.append(v)
        return k, v

    def advance(self, t: int) -> None:
        pass


def _gpt_step(
    model: nn.Module, ids: torch.Tensor, past_k: torch.Tensor | None = None, past_v: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cache = _PastCache(past_k, past_v)
    logits = model(ids, cache=cache)
    return logits, torch.stack(cache.keys), torch.stack(cache.values)


def _gpt_parts(model: nn.Module, ids: torch.Tensor) -> list[Part]:
    if ids.shape[1] < 2:
        raise NeuratlasError("GPT export needs example sequences of at least 2 tokens")
    prompt, nxt = ids[:, :-1], ids[:, -1:]
    with torch.no_grad():
        _, past_k, past_v = _gpt_step(model, prompt)
    past_axes = {1: "batch", 3: "past_sequence"}
    layout = "(n_layer, batch, n_kv_head, sequence, head_dim)"
    return [
        Part(
            "model",
            _Call(model, _gpt_step),
            (ids,),
            ["input_ids"],
            ["logits", "present_keys", "present_values"],
            [TOKENS],
            [f"present keys/values {layout} feed decoder_with_past"],
        ),
        Part(
            "decoder_with_past",
            _Call(model, _gpt_step),
            (nxt, past_k, past_v),
            ["input_ids", "past_keys", "past_values"],
            ["logits", "present_keys", "present_values"],
            [BATCH, past_axes, past_axes],
            [f"past keys/values {layout}; positions continue after the past; total ≤ {model.cfg.max_seq_len} tokens"],
        ),
    ]
