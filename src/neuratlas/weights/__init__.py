"""Pretrained weights from outside Neuratlas, mapped onto its models: BERT/MiniLM and GPT-2 (Hugging Face
folders), nanoGPT checkpoints, the ImageNet EfficientNet-Lite0, the Llama family (Hugging Face folders and GGUF
files). Every file is read without executing code
(safetensors, ``torch.load(weights_only=True)``); :func:`load_pretrained_weights` loads what a model's
``pretrained`` option names."""

from neuratlas.weights.bert import PRETRAINED, bert_config, load_bert_weights, load_hf_bert, resolve_pretrained
from neuratlas.weights.efficientnet import (
    IMAGENET_LABELS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE0,
    import_efficientnet_lite0,
    lite0_key_map,
    lite0_state,
    load_efficientnet_lite0,
)
from neuratlas.weights.gpt2 import gpt2_config, load_hf_gpt2
from neuratlas.weights.hf import read_hf_state_dict
from neuratlas.weights.llama import (
    PRETRAINED as PRETRAINED_LLMS,
)
from neuratlas.weights.llama import (
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
from neuratlas.weights.nanogpt import load_nanogpt
from neuratlas.weights.pretrained import load_pretrained_weights
from neuratlas.weights.state_dict import adapt_input_conv, load_pretrained

__all__ = [
    "PRETRAINED_LLMS",
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
    "IMAGENET_LABELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LITE0",
    "PRETRAINED",
    "adapt_input_conv",
    "bert_config",
    "gpt2_config",
    "import_efficientnet_lite0",
    "lite0_key_map",
    "lite0_state",
    "load_bert_weights",
    "load_efficientnet_lite0",
    "load_hf_bert",
    "load_hf_gpt2",
    "load_nanogpt",
    "load_pretrained",
    "load_pretrained_weights",
    "read_hf_state_dict",
    "resolve_pretrained",
]
