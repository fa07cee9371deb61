"""Transformer recipes: GPT language models on Shakespeare, BERT pretraining and fine-tuning.

Families are the model modules: ``gpt`` (tour: a character-level GPT on the complete works, ~1 CPU
minute) and ``bert`` (tour: the real all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes reviews).
``gpt-tinyshakespeare-baby`` is nanoGPT's CPU "baby GPT" command as a recipe, for the race in issue 10.
"""

from neuratlas.recipes.registry import register_recipe


def _lm(
    model,
    data,
    steps,
    lr=1e-3,
    min_lr_ratio=0.1,
    warmup=100,
    wd=0.1,
    eval_tokens=0,
    task="language-modeling",
    optimizer="adamw",
    **trainer,
):
    return {
        "model": model if isinstance(model, dict) else {"name": model},
        "data": data,
        "task": {"name": task, "eval_tokens": eval_tokens},
        "optimizer": {"name": optimizer, "lr": lr, "weight_decay": wd, "betas": (0.9, 0.99)},
        "schedule": {"name": "cosine", "warmup_steps": warmup, "min_lr_ratio": min_lr_ratio},
        "trainer": {"max_steps": steps, "grad_clip": 1.0, "log_every": 50, **trainer},
    }


CHAR = {"name": "shakespeare", "tokenizer": "char"}
# nanoGPT's CPU "baby GPT" command: its model, data, batch and context (the race recipes share them)
NANOGPT_BABY_MODEL = {"name": "gpt-char-baby", "bias": False}
NANOGPT_BABY_DATA = {"name": "tinyshakespeare", "batch_size": 12, "block_size": 64}

register_recipe(
    "gpt-shakespeare-char-quick",
    _lm(
        "gpt-char-baby",
        {**CHAR, "batch_size": 16, "block_size": 64},
        1000,
        lr=2e-3,
        warmup=50,
        eval_tokens=65536,
        eval_every=500,
        time_limit=100,
    ),
    "baby GPT (4 × 128) on Shakespeare's complete works, characters, 1,000 steps (~1 CPU minute)",
    family="gpt",
    tour=True,
    target="val loss ≤ 2.0 nats/char (≈2.9 bits/char)",
)
register_recipe(
    "gpt-tinyshakespeare-baby",
    _lm(
        NANOGPT_BABY_MODEL,
        NANOGPT_BABY_DATA,
        2000,
        eval_every=2000,
        tensorboard=False,  # as nanoGPT: the console and metrics.csv only
    ),
    "nanoGPT's CPU 'baby GPT' command on Tiny Shakespeare (same data, split, model, optimiser and schedule); "
    "scored on the whole val split",
    family="gpt",
    target="val loss ≤ 1.8857 (nanoGPT's figure)",
)
register_recipe(
    "gpt-tinyshakespeare-baby-fast",
    _lm(
        NANOGPT_BABY_MODEL,
        NANOGPT_BABY_DATA,
        1150,
        lr=3e-3,
        eval_every=1150,
        tensorboard=False,
    ),
    "the same baby GPT, data, batch and split as nanoGPT's command, Neuratlas' schedule: 3× the learning "
    "rate, 1,150 steps instead of 2,000",
    family="gpt",
    target="val loss ≤ nanoGPT's 2,000-iteration figure in ≤ 0.5× its wall time",
)
register_recipe(
    "gpt-tinyshakespeare-10min",
    _lm(
        {"name": "gpt-char-baby", "dim": 256, "max_seq_len": 128, "bias": False, "dropout": 0.1, "attn_dropout": 0.0},
        {"name": "tinyshakespeare", "batch_size": 32, "block_size": 128},
        3000,  # the schedule's grid: training goes on until the clock runs out (warmup: 100/3000 of it)
        optimizer="muon",
        lr=5e-3,
        eval_every=100000,
        time_limit=570,
        budget_schedule=True,
        ema_decay=0.999,
    ),
    "best char-level GPT in 10 minutes of wall clock (4 × 256, context 128; Muon on the hidden matrices, "
    "AdamW on the rest; ~15 epochs of the 1M-character text overfit without dropout: 0.1 on the residual "
    "branches, none on the attention probabilities, which costs 15% of the steps on a CPU; the moving "
    "average of the weights is scored): the cosine schedule follows the clock and ends with the budget",
    family="gpt",
    target="val loss ≤ 1.47 (nanoGPT's A100 figure; nanoGPT reached ≈1.55 in 10 min on 2 cores)",
)
register_recipe(
    "gpt-shakespeare-char",
    _lm("gpt-char", {**CHAR, "batch_size": 64, "block_size": 256}, 5000, eval_tokens=262144, eval_every=500),
    "nanoGPT's shakespeare_char GPT (6 × 384, context 256, dropout 0.2) on the complete works, 5,000 steps",
    family="gpt",
    target="val loss ≤ 1.45",
)
register_recipe(
    "gpt-shakespeare-bpe",
    _lm(
        {"name": "gpt-mini", "dropout": 0.1},
        {
            "name": "shakespeare",
            "tokenizer": "bpe",
            "bpe_vocab_size": 4096,
            "batch_size": 32,
            "block_size": 128,
        },
        3000,
        lr=6e-4,
        eval_tokens=65536,
        eval_every=500,
    ),
    "GPT 4 × 256 with a byte-level BPE vocabulary (4,096) trained on the training split",
    family="gpt",
    target="val bits/char ≤ 2.0",
)
register_recipe(
    "transformer-modern-shakespeare",
    _lm(
        {"name": "transformer-modern", "dim": 128, "n_layer": 4, "n_head": 4, "n_kv_head": 2},
        {**CHAR, "batch_size": 16, "block_size": 64},
        1000,
        lr=2e-3,
        warmup=50,
        eval_tokens=65536,
        eval_every=500,
    ),
    "Table 2's modern column (pre-RMSNorm, GQA, RoPE, SwiGLU) at the baby-GPT size, to compare with "
    "gpt-shakespeare-char-quick",
    family="gpt",
    target="val loss ≤ 2.0",
)

register_recipe(
    "bert-rotten-tomatoes-quick",
    {
        "model": {"name": "minilm-l6", "dropout": 0.1},
        "data": {"name": "rotten-tomatoes", "tokenizer": "all-MiniLM-L6-v2", "max_len": 40, "batch_size": 32},
        "task": {"name": "text-classification"},
        "optimizer": {"name": "adamw", "lr": 2e-4, "weight_decay": 0.01},
        "schedule": {"name": "linear", "warmup_frac": 0.1},
        "trainer": {
            "max_steps": 120,
            "eval_every": 120,
            "grad_clip": 1.0,
            "log_every": 25,
            "time_limit": 100,
        },
    },
    "the real all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes snippets (fresh vs rotten), 120 steps",
    family="bert",
    tour=True,
    target="test accuracy ≥ 0.75",
)
register_recipe(
    "bert-rotten-tomatoes",
    {
        "model": {"name": "minilm-l6", "dropout": 0.1},
        "data": {"name": "rotten-tomatoes", "tokenizer": "all-MiniLM-L6-v2", "max_len": 64, "batch_size": 32},
        "task": {"name": "text-classification"},
        "optimizer": {"name": "adamw", "lr": 1e-4, "weight_decay": 0.01},
        "schedule": {"name": "linear", "warmup_frac": 0.1},
        "trainer": {"epochs": 3, "grad_clip": 1.0},
    },
    "all-MiniLM-L6-v2 fine-tuned for 3 epochs on Rotten Tomatoes",
    family="bert",
    target="test accuracy ≥ 0.80",
)
register_recipe(
    "bert-shakespeare-mlm",
    _lm(
        {"name": "bert-mini", "max_seq_len": 128},
        {**CHAR, "batch_size": 32, "block_size": 128},
        2000,
        lr=1e-3,
        task="masked-lm",
        eval_tokens=65536,
        eval_every=500,
    ),
    "masked-LM pretraining (15%: 80/10/10) of a 4 × 256 BERT on Shakespeare characters",
    family="bert",
    target="masked-token accuracy ≥ 0.5",
)
