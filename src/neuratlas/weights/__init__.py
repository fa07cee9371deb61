"""Import of pretrained weights: the Llama family from Hugging Face folders and GGUF files."""

from neuratlas.weights.llama import (
    PRETRAINED,
    hf_config,
    hf_state_dict,
    is_llm,
    llama_config,
    llama_state_dict,
    load_gguf,
    load_hf_llama,
    load_llm,
    quantize_llm,
    save_hf_llama,
)

__all__ = [
    "PRETRAINED",
    "hf_config",
    "hf_state_dict",
    "is_llm",
    "llama_config",
    "llama_state_dict",
    "load_gguf",
    "load_hf_llama",
    "load_llm",
    "quantize_llm",
    "save_hf_llama",
]
