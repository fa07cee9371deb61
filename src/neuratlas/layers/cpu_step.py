"""A Llama-family decoding step on the CPU in one native call (``cpu_step.c``), for generation.

Decoding one token of SmolLM2-135M through PyTorch runs ~30 × 20 small tensor operations besides the
products with the weights, and their dispatch alone took 5.4 ms per token (2-core AMD EPYC): as long as
streaming the whole model's int8 weights from memory. :class:`CpuStep` runs the step (every layer, every
row of a batch) in one call of a small C kernel that reads the weights where PyTorch keeps them (fp32,
:class:`~neuratlas.layers.quant.BF16Linear`, :class:`~neuratlas.layers.quant.Int8Linear`,
:class:`~neuratlas.layers.quant.Int4Linear`) and appends to the model's own
:class:`~neuratlas.layers.attention.KVCache`, so a prompt's prefill stays in PyTorch and the steps after it
continue the same cache.

The kernel is compiled once per machine with the system's C compiler (``cc -O3 -march=native -fopenmp``,
about a second) into ``~/.cache/neuratlas/native``. Where there is no compiler, or ``NEURATLAS_NATIVE=0``, or
the model is not of the family (another norm, feed-forward or layer type, e.g. LoRA-wrapped layers),
:meth:`CpuStep.for_model` returns None and generation runs through PyTorch as before.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.layers.norms import RMSNorm
from neuratlas.layers.quant import BF16Linear, Int4Linear, Int8Linear
from neuratlas.sources import cache_dir

SOURCE = Path(__file__).with_name("cpu_step.c")
F32, BF16, I8, Q4 = 0, 1, 2, 3
_i64, _ptr = ctypes.c_int64, ctypes.c_void_p


class _Linear(ctypes.Structure):
    _fields_ = [("kind", _i64), ("out", _i64), ("inputs", _i64), ("w", _ptr), ("scale", _ptr), ("bias", _ptr)]


class _Layer(ctypes.Structure):
    _fields_ = [("norm1", _ptr), ("norm2", _ptr), *[(name, _Linear) for name in ("qkv", "proj", "fc1", "fc2")]]


class _Model(ctypes.Structure):
    _fields_ = [
        *[(name, _i64) for name in ("n_layer", "dim", "n_head", "n_kv_head", "head_dim", "ffn_dim", "vocab")],
        ("eps", ctypes.c_double),
        ("embed", _ptr),
        ("norm", _ptr),
        ("rope_cos", _ptr),
        ("rope_sin", _ptr),
        ("rope_len", _i64),
        ("head", _Linear),
        ("layers", ctypes.POINTER(_Layer)),
    ]


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        return next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def compiler() -> str | None:
    """The C compiler the kernel is built with: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build(target: Path, flags: list[str]) -> bool:
    """Compile the kernel into ``target`` with ``flags`` (besides -O3 -shared -fPIC); False if it fails. The
    file appears whole or not at all (written beside it, then renamed)."""
    cc = compiler()
    if cc is None:
        return False
    try:  # a cache folder that cannot be written: no kernel, decoding through PyTorch
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError:
        return False
    try:
        cmd = [cc, "-O3", "-shared", "-fPIC", *flags, str(SOURCE), "-o", tmp, "-lm"]
        if subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0:
            os.replace(tmp, target)
            return True
    except (OSError, subprocess.SubprocessError):
        pass
    Path(tmp).unlink(missing_ok=True)
    return False


def load(path: Path) -> ctypes.CDLL | None:
    """A built kernel, its entry point typed; None if it does not load."""
    try:
        lib = ctypes.CDLL(str(path))  # torch is loaded: its libgomp serves the kernel's OpenMP too
    except OSError:
        return None
    fn = lib.neuratlas_llama_step
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.POINTER(_Model), _i64, _ptr, _ptr, _i64, _ptr, _ptr, _i64, _ptr, _i64]
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use and cached per source, compiler and CPU; None where it cannot
    be built here (no C compiler) or ``NEURATLAS_NATIVE=0``."""
    switch = os.environ.get("NEURATLAS_NATIVE", "1")
    if switch not in ("0", "1"):  # "off" or "false" would otherwise leave the kernel on without a word
        raise NeuratlasError(f"NEURATLAS_NATIVE must be 0 (decode through PyTorch) or 1, not {switch!r}")
    cc = compiler()
    if switch == "0" or cc is None:
        return None
    parts = [SOURCE.read_bytes(), cc.encode(), platform.machine().encode(), _cpu_flags().encode()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    target = cache_dir("native") / f"cpu_step-{key}.so"
    # the first that builds: OpenMP and the CPU's own vector width, then without either
    flag_sets = (["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native"], [])
    if not target.is_file() and not any(build(target, flags) for flags in flag_sets):
        return None
    return load(target)


def _linear(m: nn.Module, keep: list) -> _Linear | None:
    """The kernel's view of one linear layer, or None for a layer type it does not read."""
    bias = getattr(m, "bias", None)
    if bias is not None:
        bias = bias.detach().float().contiguous()
        keep.append(bias)
    b = bias.data_ptr() if bias is not None else None
    if type(m) is nn.Linear and m.weight.dtype == torch.float32:
        kind, w, scale = F32, m.weight, None
    elif type(m) is BF16Linear:
        kind, w, scale = BF16, m.weight, None
    elif type(m) is Int8Linear:
        kind, w, scale = I8, m.q, m.scale.float().contiguous()
        keep.append(scale)
    elif type(m) is Int4Linear:
        kind, w, scale = Q4, m.blocks, None
    else:
        return None
    if (kind == Q4 and m.in_features % 32) or w.device.type != "cpu" or not w.is_contiguous():
        return None
    scale_at = scale.data_ptr() if scale is not None else None
    return _Linear(kind, m.out_features, m.in_features, w.data_ptr(), scale_at, b)


class CpuStep:
    """The decoding step of one model through the native kernel: ``step(tokens, first, cache)`` → logits.

    Holds pointers into the model's tensors (made once, at :meth:`for_model`): build it for a generation,
    after the weights are final, and drop it after.
    """

    def __init__(self, model: nn.Module, lib: ctypes.CDLL, layers: list[_Layer], head: _Linear, keep: list) -> None:
        cfg = model.cfg
        self.model, self.lib, self.keep = model, lib, keep
        self.layers = (_Layer * len(layers))(*layers)
        self.rope = model.transformer.rope
        self.struct = _Model(
            cfg.n_layer,
            cfg.dim,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.head_dim,
            cfg.ffn_dim,
            cfg.vocab_size,
            cfg.norm_eps,
            model.embed.tok.weight.data_ptr(),
            model.transformer.norm.weight.data_ptr(),
            None,
            None,
            0,
            head,
            self.layers,
        )

    @classmethod
    def for_model(cls, model: nn.Module) -> CpuStep | None:
        """The step for a Neuratlas GPT of the Llama family on the CPU in fp32 (weights fp32, bf16, int8 or
        int4), or None where the kernel cannot run it (then decode through PyTorch)."""
        cfg = getattr(model, "cfg", None)
        tf = getattr(model, "transformer", None)
        if cfg is None or tf is None or model.training:
            return None
        if not (
            cfg.norm == "pre_rmsnorm"
            and cfg.positions in ("rope", "none")
            and cfg.ffn == "swiglu"
            and not cfg.scale_embeddings
            and not cfg.embed_norm
            and not cfg.type_vocab_size
            and type(tf.norm) is RMSNorm
            and all(b.cross_attn is None and type(b.norm1) is RMSNorm and type(b.norm2) is RMSNorm for b in tf.blocks)
            and all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
            and model.embed.tok.weight.is_contiguous()
        ):
            return None
        lib = library()
        if lib is None:
            return None
        keep: list = []
        layers = []
        for b in tf.blocks:
            parts = [_linear(m, keep) for m in (b.attn.qkv, b.attn.proj, b.ffn.fc1, b.ffn.fc2)]
            if any(p is None for p in parts):
                return None
            layers.append(_Layer(b.norm1.weight.data_ptr(), b.norm2.weight.data_ptr(), *parts))
        head = _linear(model.head, keep)
        if head is None or head.out < cfg.vocab_size:
            return None
        return cls(model, lib, layers, head, keep)

    def __call__(self, tokens: torch.Tensor, first: torch.Tensor | None, cache) -> torch.Tensor:
        """Logits (B, vocab) of the next token after ``tokens`` (B,), appended to ``cache`` (advanced by one).
        ``first`` (B,): where each row's real tokens start in the cache (left padding), or None (all at 0)."""
        k, v = cache.k, cache.v
        _, batch, _, max_len, _ = k.shape
        pos = cache.length
        if pos >= max_len:
            raise NeuratlasError(f"KV cache holds {max_len} tokens; cannot add one more")
        if k.dtype != torch.float32 or not (k.is_contiguous() and v.is_contiguous()) or tokens.shape != (batch,):
            raise NeuratlasError("the native decoding step needs an fp32 cache and one token per row")
        vocab = self.model.cfg.vocab_size
        tokens = tokens.to(torch.int64).contiguous()
        if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
            raise NeuratlasError(f"token ids must be in [0, {vocab})")
        first = torch.zeros(batch, dtype=torch.int64) if first is None else first.to(torch.int64).contiguous()
        if first.shape != (batch,) or int(first.min()) < 0 or int(first.max()) > pos:
            raise NeuratlasError(f"each row's first real token must be one of the cache's {pos + 1} positions")
        if self.rope is not None:
            self.rope.cover(pos + 1)
            self.struct.rope_cos, self.struct.rope_sin = self.rope.cos.data_ptr(), self.rope.sin.data_ptr()
            self.struct.rope_len = self.rope.cos.shape[0]
        logits = torch.empty(batch, vocab)
        rc = self.lib.neuratlas_llama_step(
            ctypes.byref(self.struct),
            batch,
            tokens.data_ptr(),
            first.data_ptr(),
            pos,
            k.data_ptr(),
            v.data_ptr(),
            max_len,
            logits.data_ptr(),
            torch.get_num_threads(),
        )
        if rc != 0:
            raise NeuratlasError("the native decoding step failed" + (" (out of memory)" if rc == -2 else ""))
        cache.advance(1)
        return logits
