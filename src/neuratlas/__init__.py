"""Neuratlas: the modern landscape of neural networks as readable, tested, fast PyTorch code."""

__version__ = "0.1.0"

from neuratlas.errors import NeuratlasError  # noqa: E402
from neuratlas.models import create_model, list_models  # noqa: E402
from neuratlas.weights import load_llm  # noqa: E402  (also registers the pretrained LLM names)


def load_model(path_or_name: str, **kwargs):
    """A pretrained model ready to use: a registered LLM name (``smollm2-135m-instruct``), a Hugging Face
    Llama-family folder or a GGUF file. The model carries its tokenizer as ``model.tokenizer``."""
    from neuratlas.weights import is_llm

    if is_llm(path_or_name):
        return load_llm(path_or_name, **kwargs)
    raise NeuratlasError(f"{path_or_name}: not a registered LLM, a Llama-family Hugging Face folder or a GGUF file")


__all__ = ["NeuratlasError", "__version__", "create_model", "list_models", "load_llm", "load_model"]
