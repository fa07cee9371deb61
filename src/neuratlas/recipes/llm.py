"""Fine-tuning recipes for pretrained LLMs: SmolLM2-135M-Instruct with LoRA adapters on a chat set.

``neuratlas train smollm2-lora-arithmetic`` measures the held-out metrics before training, fine-tunes (loss on
the assistant's tokens only), measures them again, and saves the adapters alone
(``lora_adapters.safetensors``) and the merged model as a Hugging Face folder (``hf/``) that ``transformers``
loads. ``--data.path FILE.jsonl`` fine-tunes on the user's own conversations instead.
"""

from __future__ import annotations

import json
import time
from typing import Any

from neuratlas.recipes.paradigms import _TRANSFER, transfer_trainer
from neuratlas.recipes.registry import Recipe, register_recipe


def run_llm_finetune(recipe: Recipe, overrides: dict[str, str]):
    from safetensors.torch import save_file

    from neuratlas.layers.lora import lora_layers, merged_copy
    from neuratlas.tour import TourRow
    from neuratlas.training.transfer import trainable_parameters
    from neuratlas.weights.llama import save_hf_llama

    trainer = transfer_trainer(recipe, overrides)
    trainable, total = trainable_parameters(trainer.model)
    print(
        f"fine-tuning {trainer.run.model['name']} on {trainer.task.describe_data()}: {trainable:,} of "
        f"{total:,} parameters train, {trainer.total_steps} steps → {trainer.run_dir}"
    )
    t0 = time.perf_counter()
    before = trainer.evaluate("val")
    print("  before: " + ", ".join(f"{k} {v:.4f}" for k, v in before.items()))
    result = trainer.fit()
    after = result.val or trainer.evaluate("val")
    print("  after:  " + ", ".join(f"{k} {v:.4f}" for k, v in after.items()))
    run_dir = result.run_dir
    if lora_layers(trainer.model):
        adapters = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items() if ".lora_" in k}
        save_file(adapters, str(run_dir / "lora_adapters.safetensors"))
    merged = merged_copy(trainer.model)
    merged.tokenizer = trainer.task.data.tokenizer
    hf = save_hf_llama(merged, run_dir / "hf")
    (run_dir / "finetune.json").write_text(
        json.dumps(
            {"before": before, "after": after, "trainable": trainable, "total": total, "hf_folder": str(hf)}, indent=2
        )
    )
    print(f"  saved: {hf} (transformers' from_pretrained), {run_dir / 'lora_adapters.safetensors'}")
    metric = trainer.task.metric
    return TourRow(
        recipe.family,
        recipe.name,
        trainer.run.model["name"],
        trainer.task.describe_data(),
        f"held-out {metric} (before {before[metric]:.3f})",
        after[metric],
        total,
        time.perf_counter() - t0,
        recipe.target,
        str(run_dir / "curves.png"),
    )


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
    "task": {"name": "chat_sft", "eval_answers": 100},
    "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 0.0},
    "schedule": {"name": "linear", "warmup_frac": 0.1},
    "trainer": {"max_steps": 60, "eval_every": 60, "grad_clip": 1.0},
}
_TRANSFER["smollm2-lora-arithmetic"] = {
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_targets": "*.attn.qkv,*.attn.proj,*.ffn.fc1,*.ffn.fc2",
    "train_head": False,
}
register_recipe(
    "smollm2-lora-arithmetic",
    _SMOLLM2,
    "SmolLM2-135M-Instruct, LoRA r=8 on every attention and feed-forward projection, 60 steps on two-digit "
    "arithmetic questions; held-out answer loss and exact match before vs after",
    family="llm",
    target="held-out exact match above the base model's",
    runner=run_llm_finetune,
)
