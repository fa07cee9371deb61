"""Fine-tuning recipes for pretrained LLMs: SmolLM2-135M-Instruct with LoRA adapters on a chat set.

``neuratlas train smollm2-lora-arithmetic`` measures the held-out metrics before training, fine-tunes (loss on
the assistant's tokens only), measures them again, and saves the adapters alone
(``lora_adapters.safetensors``) and the merged model as a Hugging Face folder (``hf/``) that ``transformers``
loads. ``--data.path FILE.jsonl`` fine-tunes on the user's own conversations instead.
"""

from __future__ import annotations

from typing import Any

from neuratlas.recipes.registry import register_recipe

_SMOLLM2: dict[str, Any] = {
    "model": {"name": "smollm2-135m-instruct"},
    "data": {
        "name": "chat",
        "builtin": "arithmetic",
        "system": "Answer briefly.",
        "batch_size": 8,
        "n_train": 2000,
        "n_val": 200,
    },
    "task": {"name": "chat-sft", "eval_answers": 100},
    "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 0.0},
    "schedule": {"name": "linear", "warmup_frac": 0.1},
    "trainer": {"max_steps": 60, "eval_every": 60, "grad_clip": 1.0},
    "transfer": {
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_targets": "*.attn.qkv,*.attn.proj,*.ffn.fc1,*.ffn.fc2",
        "train_head": False,
    },
}
register_recipe(
    "smollm2-lora-arithmetic",
    _SMOLLM2,
    "SmolLM2-135M-Instruct, LoRA r=8 on every attention and feed-forward projection, 60 steps on two-digit "
    "arithmetic questions; held-out answer loss and exact match before vs after",
    family="llm",
    target="held-out exact match above the base model's",
)
