"""Chat fine-tuning (supervised): next-token loss on the assistant's tokens only, of conversations rendered
with the model's own chat template. Held out: that loss on the held-out answers, and the exact-match rate
of greedy answers (the last integer of the reply against the reference's, for checkable sets such as the
built-in arithmetic questions; whole-text equality otherwise)."""

from __future__ import annotations

import json
import math
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuratlas.data import load_dataset
from neuratlas.data.chat import IGNORE, ChatSplits, answer_value, pad_batch
from neuratlas.data.loaders import seeded_generator
from neuratlas.tasks.base import TASKS, Task, model_device


@dataclass
class ChatSFTConfig:
    eval_answers: int = 100  # held-out prompts answered greedily for exact match (0: skip)
    answer_tokens: int = 24  # new tokens per held-out answer
    checkpointing: bool = False  # gradient checkpointing of the blocks: less memory, ~30% more time


class ChatSFT(Task):
    Config = ChatSFTConfig
    metric = "exact_match"
    higher_is_better = True
    test_is_val = True

    def __init__(self, cfg: ChatSFTConfig, data_spec: dict[str, Any], seed: int = 0) -> None:
        super().__init__(cfg, data_spec, seed)
        self.data: ChatSplits = load_dataset(data_spec)
        self.batch_size = self.data.cfg.batch_size
        self.pad = self.data.tokenizer.eos_id or 0

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.data.train) // self.batch_size)

    def train_batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = seeded_generator(self.seed, index)
        pick = torch.randint(len(self.data.train), (self.batch_size,), generator=g).tolist()
        return pad_batch([self.data.train[i] for i in pick], self.pad)

    def _loss(self, model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = model(ids[:, :-1])
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE)

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        ids, labels = (t.to(self.device) for t in batch)
        if self.cfg.checkpointing:
            with checkpointed(model):
                return self._loss(model, ids, labels), {}
        return self._loss(model, ids, labels), {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, autocast: AbstractContextManager) -> dict[str, float]:
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        rows = self.data.val
        bs = self.data.cfg.eval_batch_size
        for i in range(0, len(rows), bs):
            ids, labels = pad_batch(rows[i : i + bs], self.pad)
            n = int((labels[:, 1:] != IGNORE).sum())
            with autocast:
                total += self._loss(model, ids.to(self.device), labels.to(self.device)).item() * n
            count += n
        out = {"loss": total / max(count, 1)}
        out["ppl"] = math.exp(min(out["loss"], 50))
        if self.cfg.eval_answers:
            with autocast:
                out["exact_match"] = self.exact_match(model, self.cfg.eval_answers)
        model.train(was_training)
        return out

    def exact_match(self, model: nn.Module, n: int) -> float:
        """Greedy answers to the first ``n`` held-out prompts (left-padded batches) against the references."""
        tok = self.data.tokenizer
        prompts = self.data.val_prompts[:n]
        bs = self.data.cfg.eval_batch_size
        right = 0
        for i in range(0, len(prompts), bs):
            chunk = prompts[i : i + bs]
            rows = [tok.encode_chat(m) for m, _ in chunk]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.bool)
            for j, r in enumerate(rows):
                ids[j, width - len(r) :], mask[j, width - len(r) :] = torch.tensor(r), True
            new = model.generate(
                ids.to(self.device),
                self.cfg.answer_tokens,
                temperature=0,
                stop_tokens=tok.stop_ids,
                mask=mask.to(self.device),
            )[:, width:]
            for (_, ref), row in zip(chunk, new.tolist()):
                cut = next((k for k, t in enumerate(row) if t in tok.stop_ids), len(row))
                got = tok.decode(row[:cut]).strip()
                want = answer_value(ref)
                right += (answer_value(got) == want) if want is not None else (got == ref.strip())
        return right / max(len(prompts), 1)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"tokenizer": self.data.tokenizer.to_dict()}

    def describe_data(self) -> str:
        return self.data.source

    def example_inputs(self, folder: Path) -> tuple[list[str], dict[str, str]]:
        messages, _ = self.data.val_prompts[0]
        return [messages[-1]["content"]], {"max_new_tokens": "4"}

    @dataclass
    class PredictOptions:
        max_new_tokens: int = 64
        system: str = ""  # a system message before each question

    @classmethod
    def predict(
        cls, model: nn.Module, extra: dict[str, Any], inputs: list[str], out_dir: str, options: PredictOptions
    ) -> list[str]:
        """Answer each input as a user message through the model's chat template (greedy)."""
        from neuratlas.text.tokenizers import tokenizer_from_dict

        tok = tokenizer_from_dict(extra["tokenizer"])
        lines = []
        for text in inputs:
            messages = ([{"role": "system", "content": options.system}] if options.system else []) + [
                {"role": "user", "content": text}
            ]
            ids = torch.tensor([tok.encode_chat(messages)], device=model_device(model))
            with torch.no_grad():
                row = model.generate(ids, options.max_new_tokens, temperature=0, stop_tokens=tok.stop_ids)[0]
            new = row[ids.shape[1] :].tolist()
            cut = next((k for k, t in enumerate(new) if t in tok.stop_ids), len(new))
            lines.append(f"{text}\n→ {tok.decode(new[:cut]).strip()}")
        return lines

    def on_fit_start(self, trainer) -> None:
        """The held-out metrics of the model as it starts (the pretrained one), to compare after training."""
        if trainer.step == 0:
            self.before = trainer.evaluate("val")

    def on_fit_end(self, trainer, result) -> None:
        """Save the LoRA adapters alone and the merged model as a Hugging Face folder; report before/after."""
        from safetensors.torch import save_file

        from neuratlas.layers.lora import lora_layers, merged_copy
        from neuratlas.weights.llama import save_hf_llama

        run_dir, model = result.run_dir, trainer.model
        if lora_layers(model):
            adapters = {k: v.detach().contiguous() for k, v in model.state_dict().items() if ".lora_" in k}
            save_file(adapters, str(run_dir / "lora_adapters.safetensors"))
            result.notes.append(f"LoRA adapters alone: {run_dir / 'lora_adapters.safetensors'}")
        merged = merged_copy(trainer.eval_model)
        merged.tokenizer = self.data.tokenizer
        hf = save_hf_llama(merged, run_dir / "hf")
        result.notes.append(f"merged model as a Hugging Face folder (transformers' from_pretrained): {hf}")
        before = getattr(self, "before", None)
        if before:
            result.notes.append("before training: " + ", ".join(f"{k} {v:.4f}" for k, v in before.items()))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        (run_dir / "finetune.json").write_text(
            json.dumps(
                {
                    "before": before,
                    "after": result.val,
                    "trainable": trainable,
                    "total": sum(p.numel() for p in model.parameters()),
                    "hf_folder": str(hf),
                },
                indent=2,
            )
        )


class checkpointed:
    """Within the block, every transformer block of ``model`` recomputes its activations in the backward
    pass instead of keeping them (``torch.utils.checkpoint``)."""

    def __init__(self, model: nn.Module) -> None:
        self.blocks = list(getattr(getattr(model, "transformer", None), "blocks", []))

    def __enter__(self) -> None:
        from torch.utils.checkpoint import checkpoint

        for b in self.blocks:
            forward = b.forward
            b.forward = lambda *a, _f=forward, **k: checkpoint(_f, *a, use_reentrant=False, **k)

    def __exit__(self, *exc) -> None:
        for b in self.blocks:
            del b.forward


TASKS.add(
    "chat-sft",
    ChatSFT,
    ChatSFTConfig,
    description="chat fine-tuning: loss on assistant tokens; held-out answer loss and exact match",
    aliases=("chat_sft",),
)
