"""GGUF files (llama.cpp's and Ollama's format): metadata, tensors and their block quantizations.

The file is parsed by :func:`read_gguf` (memory-mapped; nothing in it is executed). Tensors are
dequantized here with torch, one vectorised pass per tensor, from the block layouts of ggml's
``ggml-quants.c``: F32, F16, BF16, Q8_0, Q4_0, Q4_1 and the K-quants Q4_K, Q5_K, Q6_K (tested equal to
``gguf.quants.dequantize`` on random blocks). :class:`GGUFModel` turns the metadata of a ``llama`` or
``qwen2`` file into a Hugging Face style config and its tensors into Hugging Face names, so the one Llama
mapping of :mod:`neuratlas.weights.llama` builds the model.

llama.cpp stores the Q and K projections of ``llama`` models with the rows of every head reordered from
the rotate-half RoPE layout to the interleaved one (``convert_hf_to_gguf.py``'s ``permute``);
:func:`unpermute_rows` undoes it. ``qwen2`` files keep the original order (NEOX RoPE).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuratlas.errors import NeuratlasError

# ggml type id -> (name, elements per block, bytes per block)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    8: ("Q8_0", 32, 34),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    30: ("BF16", 1, 2),
}
SUPPORTED_ARCHS = ("llama", "qwen2")


def _f16(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """The fp16 scale stored at byte ``at`` of every block, as an (N, 1) fp32 column."""
    return blocks[:, at : at + 2].contiguous().view(torch.float16).float()


def _nibbles(q: torch.Tensor) -> torch.Tensor:
    """(..., n) bytes -> (..., 2n): the low nibbles of all bytes, then the high ones (ggml's order)."""
    return torch.cat([q & 0xF, q >> 4], dim=-1)


def _k_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 six-bit scales and mins packed in 12 bytes (ggml's ``get_scale_min_k4``), each (N, 8)."""
    s = s.long()
    sc = torch.cat([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], dim=1)
    mn = torch.cat([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], dim=1)
    return sc.float(), mn.float()


def dequantize_blocks(blocks: torch.Tensor, qtype: int) -> torch.Tensor:
    """(N, bytes per block) uint8 blocks of ggml type ``qtype`` -> (N, elements per block) fp32."""
    n = blocks.shape[0]
    if qtype == 0:
        return blocks.contiguous().view(torch.float32).reshape(n, 1)
    if qtype == 1:
        return blocks.contiguous().view(torch.float16).float().reshape(n, 1)
    if qtype == 30:
        return (blocks.contiguous().view(torch.int16).int() << 16).view(torch.float32).reshape(n, 1)
    if qtype == 8:  # Q8_0: d·q, q int8
        return _f16(blocks, 0) * blocks[:, 2:34].contiguous().view(torch.int8).float()
    if qtype == 2:  # Q4_0: d·(q - 8)
        return _f16(blocks, 0) * (_nibbles(blocks[:, 2:18]).float() - 8)
    if qtype == 3:  # Q4_1: d·q + m
        return _f16(blocks, 0) * _nibbles(blocks[:, 4:20]).float() + _f16(blocks, 2)
    if qtype in (12, 13):  # Q4_K / Q5_K: 8 sub-blocks of 32, each d·scale·q - dmin·min
        d, dmin = _f16(blocks, 0), _f16(blocks, 2)
        sc, mn = _k_scales(blocks[:, 4:16])
        qs = blocks[:, 16:144] if qtype == 12 else blocks[:, 48:176]
        q = _nibbles(qs.reshape(n, 4, 32)).reshape(n, 8, 32).long()  # chunk j: low nibbles, then high
        if qtype == 13:  # the fifth bit of sub-block i is bit i of qh
            qh = blocks[:, 16:48].long()
            q = q + 16 * ((qh[:, None, :] >> torch.arange(8)[None, :, None]) & 1)
        return (d[:, :, None] * sc[:, :, None] * q - dmin[:, :, None] * mn[:, :, None]).reshape(n, 256)
    if qtype == 14:  # Q6_K: 16 sub-blocks of 16, d·scale·(q - 32), q = 4 low bits (ql) + 2 high bits (qh)
        ql, qh = blocks[:, 0:128].reshape(n, 2, 64).long(), blocks[:, 128:192].reshape(n, 2, 32).long()
        lo, hi = ql & 0xF, ql >> 4
        q = (
            torch.stack(
                [
                    lo[..., :32] | ((qh & 3) << 4),
                    lo[..., 32:] | (((qh >> 2) & 3) << 4),
                    hi[..., :32] | (((qh >> 4) & 3) << 4),
                    hi[..., 32:] | (((qh >> 6) & 3) << 4),
                ],
                dim=2,
            ).reshape(n, 256)
            - 32
        )
        scales = blocks[:, 192:208].contiguous().view(torch.int8).float().repeat_interleave(16, dim=1)
        return _f16(blocks, 208) * scales * q
    raise NeuratlasError(f"ggml type {qtype} cannot be dequantized")


def type_name(qtype: int) -> str:
    return GGML_TYPES[qtype][0] if qtype in GGML_TYPES else f"ggml type {qtype}"


def unpermute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation: per head, rows (0, 2, 4, …, 1, 3, 5, …) in the file are
    rows (0, 1, 2, …) of Hugging Face's rotate-half layout. Works on any per-row data (also raw blocks)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


# --- the file format (ggml's docs/gguf.md): header, key/value metadata, tensor infos, aligned tensor data ---
# A parser of our own: gguf's GGUFReader builds a numpy memmap per string and needs 15.6 s for the 98,052
# strings of SmolLM2's vocabulary and merges; this one reads them in 0.1 s (2-core Xeon). It is tested
# field-by-field equal to GGUFReader.

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}


def _ggml_name(qtype: int) -> str:
    try:
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(qtype).name
    except (ImportError, ValueError):
        return f"ggml type {qtype}"


def read_gguf(path: Path) -> tuple[dict[str, Any], list[tuple[str, tuple[int, ...], int, int]], np.ndarray]:
    """(metadata, [(tensor name, shape in PyTorch order, ggml type, data offset)], the data section as a
    read-only uint8 memory map). Nothing is executed and nothing but the header is read eagerly."""
    import mmap
    import struct

    if not path.is_file():
        raise NeuratlasError(f"{path}: no such GGUF file")
    with path.open("rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise NeuratlasError(f"{path}: empty file, not GGUF") from None
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        value = struct.unpack_from(fmt, buf, pos)[0]
        pos += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal pos
        n = take("<Q")
        if pos + n > len(buf):
            raise struct.error("string past the end of the file")
        pos += n
        return bytes(buf[pos - n : pos]).decode("utf-8", errors="replace")

    def value(kind: int) -> Any:
        nonlocal pos
        if kind in _SCALARS:
            return take(_SCALARS[kind])
        if kind == 8:
            return text()
        if kind == 9:
            sub, n = take("<I"), take("<Q")
            if sub in _NUMPY:
                arr = np.frombuffer(buf, dtype=_NUMPY[sub], count=n, offset=pos)
                pos += arr.nbytes
                return arr.tolist()
            return [value(sub) for _ in range(n)]
        raise ValueError(f"unknown metadata value type {kind}")

    try:
        if bytes(buf[:4]) != b"GGUF":
            raise NeuratlasError(f"{path}: not a GGUF file (no GGUF magic)")
        pos = 4
        version = take("<I")
        if version not in (2, 3):
            raise NeuratlasError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
        n_tensors, n_kv = take("<Q"), take("<Q")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = text()
            meta[key] = value(take("<I"))
        infos = []
        for _ in range(n_tensors):
            name = text()
            dims = [take("<Q") for _ in range(take("<I"))]
            qtype, offset = take("<I"), take("<Q")
            infos.append((name, tuple(reversed(dims)) or (1,), qtype, offset))  # GGUF lists columns first
    except (struct.error, ValueError, OverflowError, MemoryError) as e:
        raise NeuratlasError(f"{path}: not a readable GGUF file ({e}; truncated or corrupt?)") from None
    align = int(meta.get("general.alignment", 32))
    start = (pos + align - 1) // align * align
    data = np.frombuffer(buf, dtype=np.uint8, offset=min(start, len(buf)))
    return meta, infos, data


class GGUFTensor:
    """One tensor of the file: name, ggml type, (rows, cols) shape in PyTorch order, and its raw bytes."""

    def __init__(self, name: str, qtype: int, shape: tuple[int, ...], raw: np.ndarray) -> None:
        self.name, self.qtype, self.shape, self.raw = name, qtype, shape, raw

    def blocks(self) -> torch.Tensor:
        """The raw bytes as (rows, blocks per row, bytes per block) uint8 (a copy, out of the memory map)."""
        _, per, nbytes = GGML_TYPES[self.qtype]
        rows = math.prod(self.shape[:-1]) if len(self.shape) > 1 else 1
        data = torch.from_numpy(np.array(self.raw, copy=True))
        return data.reshape(rows, self.shape[-1] // per, nbytes)

    def dequantize(self) -> torch.Tensor:
        b = self.blocks()
        return dequantize_blocks(b.reshape(-1, b.shape[-1]), self.qtype).reshape(self.shape)


class GGUFModel:
    """A GGUF file of a Llama-family model: ``config`` (Hugging Face ``config.json`` keys), ``tensors``
    (name -> :class:`GGUFTensor`), ``meta`` (all metadata) and :meth:`hf_tensors` (Hugging Face names)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta, infos, data = read_gguf(self.path)
        self.tensors: dict[str, GGUFTensor] = {}
        for name, shape, qtype, offset in infos:
            if qtype not in GGML_TYPES:
                raise NeuratlasError(
                    f"{self.path}: tensor {name} is {_ggml_name(qtype)}, a quantization type not supported "
                    f"(supported: {', '.join(n for n, _, _ in GGML_TYPES.values())})"
                )
            _, per, nbytes = GGML_TYPES[qtype]
            need = math.prod(shape) // per * nbytes
            if shape[-1] % per or offset + need > len(data):
                raise NeuratlasError(
                    f"{self.path}: tensor {name} {list(shape)} needs {need} bytes at data offset "
                    f"{offset}, the file holds {len(data)} bytes of data (truncated?)"
                )
            self.tensors[name] = GGUFTensor(name, qtype, shape, data[offset : offset + need])
        self.arch = str(self.meta.get("general.architecture"))
        self.config = self._config()

    def _get(self, key: str, default: Any = None) -> Any:
        value = self.meta.get(f"{self.arch}.{key}")
        return default if value is None else value

    def _config(self) -> dict[str, Any]:
        if self.arch not in SUPPORTED_ARCHS:
            raise NeuratlasError(
                f"{self.path}: architecture {self.arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHS)})"
            )
        if self._get("expert_count", 0):
            raise NeuratlasError(f"{self.path}: mixture-of-experts models are not supported")
        if "rope_freqs.weight" in self.tensors:
            raise NeuratlasError(
                f"{self.path}: per-frequency RoPE factors (rope_freqs, Llama 3.1 scaling) "
                "are not supported in GGUF files; use the Hugging Face folder"
            )
        try:
            n_head = int(self._get("attention.head_count"))
            dim = int(self._get("embedding_length"))
            cfg: dict[str, Any] = {
                "model_type": self.arch,
                "hidden_size": dim,
                "num_hidden_layers": int(self._get("block_count")),
                "num_attention_heads": n_head,
                "num_key_value_heads": int(self._get("attention.head_count_kv", n_head)),
                "intermediate_size": int(self._get("feed_forward_length")),
                "max_position_embeddings": int(self._get("context_length", 2048)),
                "rms_norm_eps": float(self._get("attention.layer_norm_rms_epsilon", 1e-6)),
                "rope_theta": float(self._get("rope.freq_base", 10000.0)),
                "head_dim": int(self._get("attention.key_length", dim // n_head)),
            }
        except (TypeError, ValueError) as e:
            raise NeuratlasError(f"{self.path}: metadata of {self.arch!r} incomplete ({e})") from None
        if self._get("attention.sliding_window"):
            raise NeuratlasError(f"{self.path}: sliding-window attention is not supported")
        kind = self._get("rope.scaling.type")
        if kind and kind != "none":
            if kind != "linear":
                raise NeuratlasError(f"{self.path}: rope scaling {kind!r} is not supported (linear is)")
            cfg["rope_scaling"] = {"rope_type": "linear", "factor": float(self._get("rope.scaling.factor", 1.0))}
        tokens = self.meta.get("tokenizer.ggml.tokens")
        cfg["vocab_size"] = len(tokens) if tokens else int(self._get("vocab_size", 0))
        cfg["tie_word_embeddings"] = "output.weight" not in self.tensors
        cfg["attention_bias"] = "blk.0.attn_q.bias" in self.tensors
        return cfg

    # GGUF tensor names -> Hugging Face names (per block: blk.{i}.X -> model.layers.{i}.Y)
    NAMES = {
        "token_embd": "model.embed_tokens",
        "output_norm": "model.norm",
        "output": "lm_head",
    }
    BLOCK_NAMES = {
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }

    def hf_name(self, name: str) -> str:
        if "." not in name:  # a damaged name (every GGUF tensor is STEM.weight or STEM.bias)
            raise NeuratlasError(f"{self.path}: tensor {name!r} has no place in a {self.arch} model")
        stem, kind = name.rsplit(".", 1)
        if stem in self.NAMES:
            return f"{self.NAMES[stem]}.{kind}"
        parts = stem.split(".")
        if len(parts) == 3 and parts[0] == "blk" and parts[2] in self.BLOCK_NAMES:
            return f"model.layers.{parts[1]}.{self.BLOCK_NAMES[parts[2]]}.{kind}"
        raise NeuratlasError(f"{self.path}: tensor {name} has no place in a {self.arch} model")

    def row_order(self, name: str) -> int | None:
        """The head count whose Q/K row permutation this tensor carries (llama only), else None."""
        if self.arch != "llama":
            return None
        if ".attn_q." in name:
            return self.config["num_attention_heads"]
        if ".attn_k." in name:
            return self.config["num_key_value_heads"]
        return None

    def hf_tensor(self, name: str) -> torch.Tensor:
        """One tensor dequantized to fp32, in Hugging Face's row order."""
        w = self.tensors[name].dequantize()
        heads = self.row_order(name)
        return unpermute_rows(w, heads) if heads else w

    def q4(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """A Q4_0 / Q4_1 tensor's integers (rows, cols) in 0..15 and its per-block d and m (rows, cols / 32;
        m None for Q4_0), in Hugging Face's row order; None for other types."""
        t = self.tensors[name]
        if t.qtype not in (2, 3):
            return None
        b = t.blocks()  # (rows, blocks, bytes)
        heads = self.row_order(name)
        if heads:
            b = unpermute_rows(b, heads)
        rows, nb, _ = b.shape
        flat = b.reshape(rows * nb, -1)
        at = 2 if t.qtype == 2 else 4
        q = _nibbles(flat[:, at : at + 16]).reshape(rows, nb * 32)
        d = _f16(flat, 0).reshape(rows, nb)
        m = _f16(flat, 2).reshape(rows, nb) if t.qtype == 3 else None
        return q, d, m

    def hf_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor dequantized to fp32 under its Hugging Face name."""
        return {self.hf_name(n): self.hf_tensor(n) for n in self.tensors}

    def tokenizer(self):
        """The chat tokenizer rebuilt from ``tokenizer.ggml.*`` and ``tokenizer.chat_template``."""
        from neuratlas.text.chat import ChatTokenizer, byte_level_bpe

        m = self.meta
        model = m.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise NeuratlasError(
                f"{self.path}: tokenizer.ggml.model {model!r} is not supported (byte-level BPE, 'gpt2', is)"
            )
        tokens, merges = m.get("tokenizer.ggml.tokens"), m.get("tokenizer.ggml.merges") or []
        if not tokens:
            raise NeuratlasError(f"{self.path}: the tokenizer's vocabulary (tokenizer.ggml.tokens) is missing")
        tok = byte_level_bpe(
            tokens,
            merges,
            m.get("tokenizer.ggml.token_type"),
            str(m.get("tokenizer.ggml.pre") or "default"),
            str(self.path),
        )

        def token(key: str) -> str | None:
            i = m.get(f"tokenizer.ggml.{key}_token_id")
            return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

        return ChatTokenizer(
            tok,
            bos=token("bos"),
            eos=token("eos"),
            add_bos=bool(m.get("tokenizer.ggml.add_bos_token", False)),
            chat_template=m.get("tokenizer.chat_template"),
            source=str(self.path),
        )
