"""CLIP: InfoNCE against a hand computation, the learned and clamped temperature, recall@k, the held-out-name
split, model shapes and a bounded real-data run that beats chance at zero-shot classification."""

import math

import pytest
import torch

from neuratlas import create_model
from neuratlas.data.image_text import EMOJI_TEMPLATES, caption_table, emoji_names, encode_captions, split_names
from neuratlas.errors import NeuratlasError
from neuratlas.models.clip import clip_loss
from neuratlas.tasks.contrastive import retrieval_recall


def reference_infonce(logits: list[list[float]]) -> float:
    """Per-element hand computation: -log softmax of the diagonal, over rows and over columns, averaged."""
    n = len(logits)
    rows = cols = 0.0
    for i in range(n):
        rows += -(logits[i][i] - math.log(sum(math.exp(logits[i][j]) for j in range(n))))
        cols += -(logits[i][i] - math.log(sum(math.exp(logits[j][i]) for j in range(n))))
    return 0.5 * (rows / n + cols / n)


def test_infonce_matches_hand_computation_and_is_symmetric():
    logits = torch.randn(5, 5, dtype=torch.float64) * 3
    assert clip_loss(logits).item() == pytest.approx(reference_infonce(logits.tolist()), rel=1e-6)
    assert clip_loss(logits.T).item() == pytest.approx(clip_loss(logits).item(), rel=1e-6)
    # Distinct groups are exactly the plain loss; shared groups make same-group pairs positives.
    assert clip_loss(logits, torch.arange(5)).item() == pytest.approx(clip_loss(logits).item(), rel=1e-6)
    groups = torch.tensor([0, 0, 1, 2, 2])
    same = (groups[:, None] == groups[None]).double()
    t = same / same.sum(1, keepdim=True)
    ref = 0.5 * (-(t * logits.log_softmax(1)).sum(1).mean() - (t * logits.T.log_softmax(1)).sum(1).mean())
    assert clip_loss(logits, groups).item() == pytest.approx(ref.item(), rel=1e-6)
    # A perfect alignment with a sharp scale costs ~0; a uniform one costs log(n).
    assert clip_loss(torch.eye(4) * 100).item() < 1e-6
    assert clip_loss(torch.zeros(4, 4)).item() == pytest.approx(math.log(4))


def test_temperature_is_learned_and_clamped():
    model = create_model("clip-convnet", vocab_size=20, pad_id=19)
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    images, ids = model.dummy_input(batch=4)
    clip_loss(model(images, ids)).backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # exp(10) ≫ 100
    assert model.scale().item() == pytest.approx(100.0)
    model.zero_grad()
    clip_loss(model(images, ids)).backward()
    assert model.logit_scale.grad.abs().item() == 0.0  # past the clamp nothing pushes it further


def test_recall_at_k_on_a_hand_made_similarity_matrix():
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.2],  # query 0: its item (0) first            -> hit@1
            [0.8, 0.1, 0.7, 0.0],  # query 1: its item ranks 3rd             -> hit@5 only
            [0.0, 0.3, 0.1, 0.9],  # query 2: its item ranks 3rd             -> hit@5 only
            [0.5, 0.6, 0.7, 0.1],
        ]
    )  # query 3: its item ranks last (4th)      -> hit@5 only
    groups = torch.arange(4)
    r = retrieval_recall(sim, groups, groups, ks=(1, 2, 3, 5))
    assert r == {1: 0.25, 2: 0.25, 3: 0.75, 5: 1.0}
    # Group-level hits: query 1 counts item 0 as correct when both belong to group 0.
    g = torch.tensor([0, 0, 1, 2])
    assert retrieval_recall(sim, g, g, ks=(1,))[1] == 0.5  # queries 0 and 1 hit


def test_heldout_names_never_appear_in_training():
    pairs = emoji_names()
    assert len(pairs) > 3000 and len({n for _, n in pairs}) == len(pairs)  # CLDR names are unique
    assert ("😀", "grinning face") in pairs
    train, val, test = split_names(len(pairs), 400, seed=0)
    names = [n for _, n in pairs]
    seen = {names[i] for i in train.tolist()}
    assert len(val) == len(test) == 400 and len(train) == len(pairs) - 800
    assert not seen & {names[i] for i in val.tolist()} and not seen & {names[i] for i in test.tolist()}
    assert not set(val.tolist()) & set(test.tolist())
    assert torch.equal(split_names(len(pairs), 400, seed=0)[2], test)  # deterministic
    with pytest.raises(NeuratlasError):
        split_names(10, 5, seed=0)


def test_caption_tokens_and_model_shapes():
    tokens, tok = caption_table(["grinning face", "cat"], EMOJI_TEMPLATES)
    pad, eot = tok.token_id("<pad>"), tok.token_id("<eot>")
    assert tokens.shape[:2] == (2, len(EMOJI_TEMPLATES))
    assert tok.decode(tokens[1, 1].tolist()) == "an emoji of cat."
    assert tokens[1, 0, 3] == eot and (tokens[1, 0, 4:] == pad).all()
    for name in ("clip-convnet", "clip-vit"):
        model = create_model(name, vocab_size=tok.vocab_size, pad_id=pad, context_length=tokens.shape[-1]).eval()
        images, ids = model.dummy_input(batch=2)
        assert model(images, ids).shape == (2, 2)
        img, txt = model.encode_image(torch.randn(3, 1, 28, 28)), model.encode_text(tokens[:, 0])
        assert img.shape == (3, 128) and txt.shape == (2, 128)
        assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
        # Padding after the end-of-text token does not change a caption's embedding (causal + EOT pooling).
        longer = torch.cat([tokens[:, 0], torch.full((2, 5), pad)], 1)[:, : model.cfg.context_length]
        assert torch.allclose(model.encode_text(longer), txt, atol=1e-5)
    with pytest.raises(NeuratlasError, match="expects images"):
        model.encode_image(torch.randn(2, 3, 28, 28))
    with pytest.raises(NeuratlasError, match="token ids"):
        model.encode_text(torch.full((1, 4), 10_000))
    with pytest.raises(NeuratlasError, match="longer than context_length"):
        encode_captions(tok, ["cat cat cat"], context_length=4)


@pytest.mark.slow
def test_quick_recipe_beats_chance_at_zero_shot(run_overrides, full):
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    overrides = dict(run_overrides)
    if not full:
        overrides.update(
            {
                "trainer.max_steps": "40",
                "data.batch_size": "128",
                "data.limit_train": "5120",
                "data.val_size": "500",
                "task.retrieval_size": "500",
            }
        )
    trainer = Trainer(get_recipe("clip-fashion-quick").run_config(overrides))
    result = trainer.fit()
    assert result.test["zero_shot_chance"] == pytest.approx(0.1)
    assert result.test["zero_shot_accuracy"] > (0.75 if full else 0.35)
    assert result.test["t2i_recall@5"] > 0.5
    picture = trainer.task.plot_zero_shot(trainer.model, "val", result.run_dir / "zero_shot.png")
    assert picture.stat().st_size > 10_000


def test_font_is_located_in_the_cache_first(tmp_path, monkeypatch):
    from neuratlas.data.image_text import NOTO_EMOJI

    monkeypatch.setenv("NEURATLAS_CACHE", str(tmp_path))
    (tmp_path / "noto-emoji").mkdir()
    (tmp_path / "noto-emoji" / "NotoColorEmoji.ttf").write_bytes(b"font")
    folder, source = NOTO_EMOJI.locate(download=False)
    assert folder == tmp_path / "noto-emoji" and source.startswith("cache")
