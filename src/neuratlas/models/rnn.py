"""Recurrent networks: a vanilla RNN, an LSTM and a GRU, step by step with a hidden state.

Two implementations of the same layer share ONE set of parameters, owned by a ``torch.nn.RNN/LSTM/GRU``:
``impl="fused"`` calls that module (oneDNN/cuDNN kernels: the fast path used for training) and
``impl="cells"`` runs the readable Python loop below, where the gate equations are written out. Because the
weights are the same tensors (same names, same gate order), checkpoints move freely between the two and the
tests check that both give torch's values and gradients.

Stacked layers, bidirectional layers, dropout between layers (as ``torch.nn.LSTM(dropout=...)``) and
variable-length batches (``lengths``: packed sequences on the fused path, masked updates on the cell path).

Three heads on the same recurrent body:
- ``RNNForecaster``: a window of past values -> ``horizon`` future values × quantiles (direct multi-step).
- ``RNNClassifier``: tokens or feature vectors (variable length) -> class logits.
- ``RNNLanguageModel``: tokens -> next-token logits, with an optional carried state for generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from neuratlas.errors import NeuratlasError
from neuratlas.layers.sampling import sample
from neuratlas.models.registry import register_model

CELLS = ("rnn", "lstm", "gru")
IMPLS = ("fused", "cells")
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


# --- the cells: one time step each, gate equations as in torch.nn's documentation ---------------------------
def rnn_cell(
    x_proj: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, nonlinearity: str = "tanh"
) -> torch.Tensor:
    """h' = tanh(W_ih x + b_ih + W_hh h + b_hh); ``x_proj`` is W_ih x + b_ih, precomputed for all steps."""
    pre = x_proj + F.linear(h, w_hh, b_hh)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def lstm_cell(
    x_proj: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], w_hh: torch.Tensor, b_hh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gates i, f, g, o (torch's order); the cell c is updated additively, which lets gradients survive."""
    h, c = state
    i, f, g, o = (x_proj + F.linear(h, w_hh, b_hh)).chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g  # forget some of the old memory, write some of the new candidate
    h = o * torch.tanh(c)  # expose a gated view of the memory
    return h, c


def gru_cell(x_proj: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """Reset gate r, update gate z, candidate n; h' interpolates between the old state and the candidate."""
    x_r, x_z, x_n = x_proj.chunk(3, dim=-1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)  # r gates the recurrent part *after* its bias, exactly as torch does
    return (1 - z) * n + z * h


# --- a stack of layers -------------------------------------------------------------------------------------
class Recurrent(nn.Module):
    """Stacked, optionally bidirectional recurrent layers, batch-first: (B, T, C) -> (B, T, D*H), state.

    ``state`` follows torch's layout: h of shape (n_layer * D, B, H) (and c for the LSTM), ordered
    layer 0 forward, layer 0 backward, layer 1 forward, ...
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden: int,
        n_layer: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        impl: str = "fused",
        nonlinearity: str = "tanh",
        forget_bias: float = 0.0,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise NeuratlasError(f"unknown recurrent cell {cell!r}; choose from {', '.join(CELLS)}")
        if impl not in IMPLS:
            raise NeuratlasError(f"unknown recurrent impl {impl!r}; choose from {', '.join(IMPLS)}")
        self.cell, self.impl, self.nonlinearity = cell, impl, nonlinearity
        self.hidden, self.n_layer, self.num_directions = hidden, n_layer, 2 if bidirectional else 1
        self.dropout = dropout if n_layer > 1 else 0.0
        kw = dict(num_layers=n_layer, batch_first=True, bidirectional=bidirectional, dropout=self.dropout)
        if cell == "rnn":
            self.rnn = nn.RNN(input_size, hidden, nonlinearity=nonlinearity, **kw)
        else:
            self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(input_size, hidden, **kw)
        if forget_bias and cell == "lstm":  # start with f = σ(b) close to 1: remember by default
            with torch.no_grad():
                for name, b in self.rnn.named_parameters():
                    if name.startswith("bias_hh"):
                        b[hidden : 2 * hidden] += forget_bias

    @property
    def output_size(self) -> int:
        return self.hidden * self.num_directions

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        if x.ndim != 3 or x.shape[-1] != self.rnn.input_size:
            raise NeuratlasError(
                f"recurrent layer expects input (batch, time, {self.rnn.input_size}), got {tuple(x.shape)}"
            )
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device="cpu", dtype=torch.long)
            if not torch.compiler.is_exporting() and (
                lengths.shape != (x.shape[0],) or lengths.min() < 1 or lengths.max() > x.shape[1]
            ):
                raise NeuratlasError(
                    f"lengths must hold one value in 1..{x.shape[1]} per sequence, got {lengths.tolist()}"
                )
        if self.impl == "fused":
            return self._fused(x, lengths, state)
        return self._cells(x, lengths, state)

    def _fused(self, x, lengths, state):
        if lengths is None:
            return self.rnn(x, state)
        if torch.compiler.is_exporting():
            raise NeuratlasError(
                "operator aten::_pack_padded_sequence (variable-length batches through a "
                "bidirectional RNN) does not trace; left-to-right RNNs export without it"
            )
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed, state)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out, state

    def _cells(self, x, lengths, state):
        """The readable path: one loop over time per layer and direction, the cell functions above."""
        B, T, _ = x.shape
        n_state = self.n_layer * self.num_directions
        zeros = x.new_zeros(n_state, B, self.hidden)
        if state is None:
            h0, c0 = zeros, zeros
        else:
            h0, c0 = state if self.cell == "lstm" else (state, zeros)
        # mask[t] is True for the sequences that are still running at step t (padding keeps the state)
        mask = None if lengths is None else (torch.arange(T)[:, None] < lengths[None, :]).to(x.device)[..., None]
        h_out, c_out = [], []
        layer_in = x
        for layer in range(self.n_layer):
            outs = []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                out, h, c = self._run_direction(layer_in, layer, direction, h0[k], c0[k], mask)
                outs.append(out)
                h_out.append(h)
                c_out.append(c)
            layer_in = torch.cat(outs, dim=-1)
            if self.dropout and self.training and layer < self.n_layer - 1:
                layer_in = F.dropout(layer_in, self.dropout, training=True)
        h_n = torch.stack(h_out)
        return layer_in, ((h_n, torch.stack(c_out)) if self.cell == "lstm" else h_n)

    def _run_direction(self, x, layer, direction, h, c, mask):
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        w_ih, w_hh = getattr(self.rnn, "weight_ih" + suffix), getattr(self.rnn, "weight_hh" + suffix)
        b_ih, b_hh = getattr(self.rnn, "bias_ih" + suffix), getattr(self.rnn, "bias_hh" + suffix)
        x_proj = F.linear(x, w_ih, b_ih)  # the input half of every gate, for all steps at once: (B, T, G*H)
        steps = range(x.shape[1] - 1, -1, -1) if direction else range(x.shape[1])
        out = [None] * x.shape[1]
        for t in steps:
            if self.cell == "lstm":
                h_new, c_new = lstm_cell(x_proj[:, t], (h, c), w_hh, b_hh)
            elif self.cell == "gru":
                h_new, c_new = gru_cell(x_proj[:, t], h, w_hh, b_hh), c
            else:
                h_new, c_new = rnn_cell(x_proj[:, t], h, w_hh, b_hh, self.nonlinearity), c
            if mask is not None:  # finished (or, backwards, not yet started) sequences keep their state
                h_new, c_new = torch.where(mask[t], h_new, h), torch.where(mask[t], c_new, c)
                out[t] = h_new * mask[t]  # padded outputs are zero, as pad_packed_sequence returns them
            else:
                out[t] = h_new
            h, c = h_new, c_new
        return torch.stack(out, dim=1), h, c


def last_valid(out: torch.Tensor, lengths: torch.Tensor | None, bidirectional: bool) -> torch.Tensor:
    """A summary vector per sequence: the forward state at its last valid step (and the backward state at
    step 0, which has read the whole sequence)."""
    B, T, DH = out.shape
    idx = (torch.full((B,), T - 1) if lengths is None else lengths.to(torch.long) - 1).to(out.device)
    fwd = out[torch.arange(B, device=out.device), idx]
    if not bidirectional:
        return fwd
    H = DH // 2
    return torch.cat([fwd[:, :H], out[:, 0, H:]], dim=-1)


# --- configs and heads -------------------------------------------------------------------------------------
@dataclass
class RNNConfig:
    cell: Literal["rnn", "lstm", "gru"] = "lstm"
    dim: int = 64  # hidden units per direction
    n_layer: int = 1
    bidirectional: bool = False
    dropout: float = 0.0  # between stacked layers, and before the head
    impl: Literal["fused", "cells"] = "fused"  # fused: torch.nn kernels (fast); cells: the readable loop (same weights)
    nonlinearity: Literal["tanh", "relu"] = "tanh"  # vanilla RNN only
    forget_bias: float = 0.0  # LSTM only: added to the forget-gate bias at init (1: Jozefowicz et al. 2015)

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {self.impl!r}")
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError("nonlinearity must be tanh or relu")
        if self.dim < 1 or self.n_layer < 1 or not 0 <= self.dropout < 1:
            raise ValueError("dim and n_layer must be positive and dropout in [0, 1)")

    def recurrent(self, input_size: int) -> Recurrent:
        return Recurrent(
            self.cell,
            input_size,
            self.dim,
            self.n_layer,
            self.bidirectional,
            self.dropout,
            self.impl,
            self.nonlinearity,
            self.forget_bias,
        )


@dataclass
class ForecasterConfig(RNNConfig):
    in_features: int = 1  # channels per time step (the target, plus any covariates)
    lookback: int = 24  # the window length the model is trained on (any length works at inference)
    horizon: int = 12  # steps predicted at once (direct multi-step)
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)  # () -> one point forecast trained with MSE

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.horizon < 1 or self.lookback < 1 or self.in_features < 1:
            raise ValueError("horizon, lookback and in_features must be positive")
        if any(not 0 < q < 1 for q in self.quantiles) or list(self.quantiles) != sorted(set(self.quantiles)):
            raise ValueError(f"quantiles must be increasing values in (0, 1), got {self.quantiles}")


class RNNForecaster(nn.Module):
    """(B, L, C) window of scaled past values -> (B, horizon, Q) forecasts (Q quantiles, or 1 point)."""

    Config = ForecasterConfig

    def __init__(self, cfg: ForecasterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.rnn = cfg.recurrent(cfg.in_features)
        self.drop = nn.Dropout(cfg.dropout)
        self.n_out = max(1, len(cfg.quantiles))
        self.head = nn.Linear(self.rnn.output_size, cfg.horizon * self.n_out)

    def dummy_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, self.cfg.lookback, self.cfg.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            x = x.unsqueeze(-1)
        out, _ = self.rnn(x)
        summary = last_valid(out, None, self.cfg.bidirectional)
        return self.head(self.drop(summary)).view(x.shape[0], self.cfg.horizon, self.n_out)


@dataclass
class SeasonalResidualConfig:
    in_features: int = 1
    lookback: int = 24
    horizon: int = 12
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    season: int = 1  # the period whose last cycle is repeated (seasonal naive); 1 = the last value
    dim: int = 256  # hidden units of the MLP
    n_layer: int = 2  # hidden layers of the MLP
    # 0.2 with the recipes' weight decay 0.05: of eleven settings tried on the three bundled series (docs/rnn.md,
    # "choosing the default"): of those beating seasonal naive on all three and ETS on two, the widest margin
    # on sunspots
    dropout: float = 0.2
    members: int = 1  # independently initialised correction networks whose outputs are averaged

    def __post_init__(self) -> None:
        if min(self.horizon, self.lookback, self.in_features, self.season, self.dim, self.n_layer, self.members) < 1:
            raise ValueError("horizon, lookback, in_features, season, dim and n_layer must be positive")
        if self.season > self.lookback:
            raise ValueError(f"season {self.season} needs a lookback of at least one cycle, got {self.lookback}")
        if any(not 0 < q < 1 for q in self.quantiles) or list(self.quantiles) != sorted(set(self.quantiles)):
            raise ValueError(f"quantiles must be increasing values in (0, 1), got {self.quantiles}")


class SeasonalResidualForecaster(nn.Module):
    """Seasonal naive plus a learned correction, on a window normalised by its own mean and spread.

    The forecast starts as the last seasonal cycle repeated (what seasonal naive predicts), and a linear map
    plus an MLP of the window, normalised per window (RevIN, Kim et al. 2022; the linear path is NLinear's,
    Zeng et al. 2023), add what that misses (trend, level shifts, a changing season) in units of the window's
    spread. Both output layers start at zero, so an untrained model *is* seasonal naive, and training can
    only move away from it as far as the training windows justify. Per-window normalisation makes the model
    indifferent to the level and scale of a series, which is what lets it forecast a series it never saw.
    """

    Config = SeasonalResidualConfig

    def __init__(self, cfg: SeasonalResidualConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_out = max(1, len(cfg.quantiles))
        out = cfg.horizon * self.n_out
        self.linear = nn.Linear(cfg.lookback, out)
        self.mlps = nn.ModuleList()
        self.heads = nn.ModuleList()
        for _ in range(cfg.members):
            layers: list[nn.Module] = []
            width = cfg.lookback
            for _ in range(cfg.n_layer):
                layers += [nn.Linear(width, cfg.dim), nn.GELU(), nn.Dropout(cfg.dropout)]
                width = cfg.dim
            self.mlps.append(nn.Sequential(*layers))
            self.heads.append(nn.Linear(width, out))
        for layer in (self.linear, *self.heads):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        h = torch.arange(cfg.horizon)
        self.register_buffer("base_index", cfg.lookback - cfg.season + h % cfg.season, persistent=False)

    def dummy_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, self.cfg.lookback, self.cfg.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x[..., 0]  # the target channel
        if x.shape[1] != self.cfg.lookback:
            raise NeuratlasError(f"{type(self).__name__} reads windows of {self.cfg.lookback} steps, got {x.shape[1]}")
        base = x[:, self.base_index]  # (B, H): seasonal naive
        mu = x.mean(1, keepdim=True)
        sd = x.std(1, keepdim=True).clamp_min(1e-3)
        xn = (x - mu) / sd
        mlp = sum(head(body(xn)) for body, head in zip(self.mlps, self.heads)) / len(self.heads)
        corr = (self.linear(xn) + mlp).view(x.shape[0], self.cfg.horizon, self.n_out)
        return base.unsqueeze(-1) + sd.unsqueeze(-1) * corr


@dataclass
class ClassifierConfig(RNNConfig):
    vocab_size: int = 0  # > 0: inputs are token ids (0 = padding), embedded to `embed_dim`
    embed_dim: int = 64
    in_features: int = 1  # vocab_size == 0: inputs are (B, T, in_features) feature vectors
    num_classes: int = 2
    pooling: Literal["last", "mean", "max"] = "last"  # last: the final valid state; mean, max: over valid steps

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in ("last", "mean", "max"):
            raise ValueError("pooling must be last, mean or max")
        if self.num_classes < 1:
            raise ValueError("num_classes must be positive")


class RNNClassifier(nn.Module):
    """Variable-length sequences -> class logits. ``forward(x, lengths=None)``; token id 0 is padding, so
    when ``lengths`` is not given for token input it is read off the padding."""

    Config = ClassifierConfig

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=0) if cfg.vocab_size else None
        self.rnn = cfg.recurrent(cfg.embed_dim if cfg.vocab_size else cfg.in_features)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(self.rnn.output_size, cfg.num_classes)

    def dummy_input(self, batch: int = 2) -> torch.Tensor:
        if self.embed is not None:
            return torch.randint(1, self.cfg.vocab_size, (batch, 12))
        return torch.randn(batch, 12, self.cfg.in_features)

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``attention_mask`` (B, T) of 1/0, as text tasks pass it, or ``lengths`` (B,); padding at the end."""
        if lengths is None and attention_mask is not None:
            lengths = attention_mask.sum(1).clamp(min=1).cpu()
        if self.embed is not None:
            if lengths is None:
                lengths = (x != 0).sum(1).clamp(min=1).cpu()
            x = self.embed(x)
        if torch.compiler.is_exporting() and not self.cfg.bidirectional:
            # a left-to-right RNN's output at step t never sees later (padding) steps, so the unpacked run read
            # at each sequence's own steps equals the packed one, and packing (no ONNX op) stays out of the graph
            out, _ = self.rnn(x)
        else:
            out, _ = self.rnn(x, lengths)
        if self.cfg.pooling == "last":
            summary = last_valid(out, lengths, self.cfg.bidirectional)
        else:
            T = out.shape[1]
            valid = (
                torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)
                if lengths is None
                else (torch.arange(T)[None] < lengths[:, None].cpu()).to(out.device)
            )[..., None]
            if self.cfg.pooling == "mean":
                summary = (out * valid).sum(1) / valid.sum(1)
            else:
                summary = out.masked_fill(~valid, float("-inf")).amax(1)
        return self.head(self.drop(summary))


@dataclass
class LanguageModelConfig(RNNConfig):
    vocab_size: int = 65  # characters of Tiny Shakespeare by default; set by the data
    embed_dim: int = 128
    block_size: int = 128  # training context (the state can carry across windows when generating)
    tie_weights: bool = False  # share the embedding and output matrices (needs embed_dim == dim)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bidirectional:
            raise ValueError("a language model reads left to right: bidirectional must be false")
        if self.tie_weights and self.embed_dim != self.dim:
            raise ValueError("tie_weights needs embed_dim == dim")


class RNNLanguageModel(nn.Module):
    """Tokens (B, T) -> next-token logits (B, T, vocab); ``forward(idx, state)`` also returns the state."""

    Config = LanguageModelConfig

    def __init__(self, cfg: LanguageModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.rnn = cfg.recurrent(cfg.embed_dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size)
        if cfg.tie_weights:
            self.head.weight = self.embed.weight

    def dummy_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randint(0, self.cfg.vocab_size, (batch, 16))

    def forward_with_state(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        out, state = self.rnn(self.drop(self.embed(idx)), state=state)
        return self.head(self.drop(out)), state

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.forward_with_state(idx)[0]

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_tokens=(),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The prompt followed by up to ``max_new_tokens`` sampled tokens. Unlike a Transformer, nothing is
        recomputed: the prompt is read once and each new token advances the carried state by one step."""
        if idx.ndim == 1:
            idx = idx[None]
        logits, state = self.forward_with_state(idx)
        out = [idx]
        for _ in range(max_new_tokens):
            nxt = sample(logits[:, -1].float(), temperature, top_k, top_p, generator).view(-1, 1)
            out.append(nxt)
            if idx.shape[0] == 1 and int(nxt) in stop_tokens:
                break
            logits, state = self.forward_with_state(nxt, state)
        return torch.cat(out, dim=1)


# --- named models ------------------------------------------------------------------------------------------
for _cell in CELLS:
    register_model(
        f"{_cell}-forecaster",
        RNNForecaster,
        f"{_cell.upper()} 64 → direct multi-step forecaster (quantile head: 10/50/90%)",
        cell=_cell,
    )
    register_model(
        f"{_cell}-classifier",
        RNNClassifier,
        f"{_cell.upper()} 64 sequence classifier (variable length, packed)",
        cell=_cell,
    )
register_model(
    "seasonal-residual",
    SeasonalResidualForecaster,
    "seasonal naive + linear/MLP correction on per-window normalised inputs (RevIN); starts as seasonal naive",
)
register_model(
    "bilstm-classifier",
    RNNClassifier,
    "2-layer bidirectional LSTM 128 classifier, mean pooling",
    dim=128,
    n_layer=2,
    bidirectional=True,
    dropout=0.2,
    pooling="mean",
)
register_model(
    "lstm-lm",
    RNNLanguageModel,
    "2-layer LSTM 256 language model (char or BPE)",
    dim=256,
    n_layer=2,
    dropout=0.1,
    embed_dim=128,
)
register_model(
    "gru-lm",
    RNNLanguageModel,
    "2-layer GRU 256 language model (char or BPE)",
    cell="gru",
    dim=256,
    n_layer=2,
    dropout=0.1,
    embed_dim=128,
)
