"""Export: every family to ONNX (checked in onnxruntime) and torch.export (checked after torch.export.load),
Hugging Face folders checked with transformers, save_pretrained/load_model over the whole registry, and the
CLI's refusals. Models are tiny and randomly initialised: parity does not need trained weights."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import neuratlas
from neuratlas import NeuratlasError, create_model
from neuratlas.export import export_model
from neuratlas.export.check import TOLERANCE
from neuratlas.export.core import write_parts
from neuratlas.models import MODELS

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def padded_tokens(vocab: int, batch: int = 3, t: int = 10, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (batch, t), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    mask[2, -6:] = 0
    return ids.masked_fill(mask == 0, pad), mask


def graph_example(n: int = 7, f: int = 8, sparse: bool = False):
    """A small graph; ``sparse``: bag-of-words node features held sparse, as Cora's are."""
    from neuratlas.layers.graph import Graph, SparseFeatures

    src = torch.tensor([0, 1, 2, 3, 4, 5, 6, 2, 3, 3, 1])  # a self-loop (3->3) and a duplicate edge (1->2)
    dst = torch.tensor([1, 2, 3, 4, 5, 6, 0, 0, 6, 3, 2])
    x = (torch.rand(n, f) < 0.3).float()
    return (SparseFeatures(x) if sparse else x), Graph(torch.stack([src, dst]), n)


# (registered name, small overrides, example builder or None for the model's dummy_input)
FAMILIES = {
    "mlp": ("mlp-tiny", {}, None),
    "convnet": ("convnet", {"channels": [8, 8, 16]}, None),
    "resnet": ("resnet8-cifar", {}, None),
    "mobilenet": ("mobilenet-v2-small", {"width_mult": 0.25}, None),
    "efficientnet": ("efficientnet-b0-small", {"width_mult": 0.25, "depth_mult": 0.25}, None),
    "vit": ("vit-fashion-p7", {"n_layer": 1, "dim": 32}, None),
    "bert-classifier": (
        "bert-mini",
        {"n_layer": 1, "dim": 32, "n_head": 2, "num_classes": 3},
        lambda m: padded_tokens(m.cfg.vocab_size),
    ),
    "bert-mlm": ("bert-mini", {"n_layer": 1, "dim": 32, "n_head": 2}, lambda m: padded_tokens(m.cfg.vocab_size)),
    # a strided view, as a validation batch cropped from longer windows is
    "gpt": ("gpt-char-baby", {"n_layer": 2, "dim": 32, "n_head": 2}, lambda m: (torch.randint(0, 65, (3, 17))[:, 1:],)),
    "gpt-modern": ("transformer-modern", {"n_layer": 1, "dim": 48}, None),  # RoPE, GQA, SwiGLU, RMSNorm
    "lstm-forecaster": ("lstm-forecaster", {"dim": 16}, lambda m: (torch.randn(1, 24, 1),)),  # a batch of one
    "gru-forecaster": ("gru-forecaster", {"dim": 16}, None),
    "lstm-classifier": ("lstm-classifier", {"dim": 16, "vocab_size": 30}, lambda m: (padded_tokens(30, t=12)[0],)),
    "gru-classifier": ("gru-classifier", {"dim": 16, "in_features": 3}, None),
    "unet": (
        "unet-resnet18-slim",
        {"encoder_args": {"width": 8}, "decoder_dim": 16, "stem_dim": 8, "img_size": 32},
        None,
    ),
    "fcos": ("fcos-resnet18-slim", {"backbone_args": {"width": 8}, "fpn_dim": 16, "img_size": 64}, None),
    "retina": ("retina-resnet18-slim", {"backbone_args": {"width": 8}, "fpn_dim": 16, "img_size": 64}, None),
    "gcn": ("gcn", {"in_features": 8, "num_classes": 3}, lambda m: graph_example(sparse=True)),
    "clip": ("clip-convnet", {"image_options": {"channels": [8, 8, 16]}, "text_dim": 32, "text_layers": 1}, None),
}


def build(family: str) -> tuple[torch.nn.Module, tuple | None]:
    name, overrides, example = FAMILIES[family]
    torch.manual_seed(0)
    model = create_model(name, **overrides).eval()
    return model, (example(model) if example else None)


# the default run covers one model per kind of graph; the rest (deeper or bigger graphs, seconds each to
# convert) run with the slow tests
FAST = {"mlp", "convnet", "resnet", "vit", "bert-classifier", "gpt", "lstm-forecaster", "lstm-classifier", "gcn"}


@pytest.mark.parametrize("family", [f if f in FAST else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES])
def test_onnx_and_pt2_match_eager(family, tmp_path):
    model, example = build(family)
    checks = write_parts(model, ("onnx", "pt2"), tmp_path, example, timing=False)
    assert checks and all(c.max_abs_diff <= TOLERANCE for c in checks), [c.line() for c in checks]
    assert {c.runtime for c in checks} == {"onnxruntime", "torch.export"}
    manifest = json.loads((tmp_path / "export.json").read_text())
    assert set(manifest["files"]) == {c.file for c in checks}
    for c in checks:
        assert (tmp_path / c.file).stat().st_size > 0


def test_gpt_decoding_with_past_equals_the_full_forward(tmp_path):
    """The exported decoding step, fed the prefill's present keys/values, gives the logits of the full
    sequence's last position: the past inputs really carry the context."""
    import onnxruntime as ort

    model, _ = build("gpt")  # learned positions: they must continue after the past
    write_parts(model, ("onnx",), tmp_path, timing=False)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 9))
    prefill = ort.InferenceSession(str(tmp_path / "model.onnx"))
    step = ort.InferenceSession(str(tmp_path / "decoder_with_past.onnx"))
    _, k, v = prefill.run(None, {"input_ids": ids[:, :-1].numpy()})
    logits, k2, _ = step.run(None, {"input_ids": ids[:, -1:].numpy(), "past_keys": k, "past_values": v})
    with torch.no_grad():
        full = model(ids)[:, -1:]
    assert k2.shape[3] == 9
    assert (torch.from_numpy(logits) - full).abs().max() < TOLERANCE


@pytest.mark.slow
def test_detector_scores_before_nms_reproduce_detect(tmp_path):
    import onnxruntime as ort

    model, _ = build("fcos")
    write_parts(model, ("onnx",), tmp_path, timing=False)
    x = model.dummy_input(2)
    boxes, scores = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"images": x.numpy()})
    from neuratlas.layers.boxes import batched_nms

    with torch.no_grad():
        out = model(x)
        ours = model.detect(out, score_thresh=0.0, max_dets=50)
    b, s = torch.from_numpy(boxes[0]), torch.from_numpy(scores[0])
    flat = s.flatten()
    top = flat.topk(1000 if flat.numel() > 1000 else flat.numel()).indices
    k = model.cfg.num_classes
    keep = batched_nms(b[top // k], flat[top], top % k, 0.5)[:50]
    assert torch.allclose(flat[top][keep], ours[0][1], atol=1e-5)
    assert "NMS" in json.loads((tmp_path / "export.json").read_text())["files"]["model.onnx"]["notes"][0]


def test_untraceable_model_names_the_operator(tmp_path):
    """A bidirectional RNN over padded tokens needs packed sequences, which do not trace."""
    model = create_model("bilstm-classifier", dim=8, n_layer=1, vocab_size=20).eval()
    ids, _ = padded_tokens(20)
    with pytest.raises(NeuratlasError, match=r"cannot be traced.*(aten|data-dependent)"):
        export_model(model, "onnx", tmp_path / "out", (ids,))
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_onnx_check_on_a_gpu_needs_onnxruntimes_cuda_provider():
    """--device picks onnxruntime's provider; one without CUDA is one line, not a silent CPU check."""
    import onnxruntime as ort

    from neuratlas.export.onnx import providers

    assert providers(ort, None) == providers(ort, torch.device("cpu")) == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert providers(ort, torch.device("cuda", 1)) == [("CUDAExecutionProvider", {"device_id": 1})]
    else:
        with pytest.raises(NeuratlasError, match=r"^--device cuda:0: this onnxruntime has no CUDA execution provider"):
            providers(ort, torch.device("cuda", 0))
    with pytest.raises(NeuratlasError, match="on the cpu or a CUDA GPU"):
        providers(ort, torch.device("mps"))


def test_graph_level_gnn_is_refused_in_one_line(tmp_path):
    with pytest.raises(NeuratlasError, match="graph-level"):
        export_model(create_model("gin", in_features=4, num_classes=2), "pt2", tmp_path / "o")
    assert not list(tmp_path.iterdir())


# --- Hugging Face folders ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, overrides, auto",
    [
        ("bert-mini", {"n_layer": 2, "dim": 32, "n_head": 2}, "AutoModelForMaskedLM"),
        ("bert-mini", {"n_layer": 2, "dim": 32, "n_head": 2, "num_classes": 3}, "AutoModelForSequenceClassification"),
        (
            "gpt-mini",
            {"n_layer": 2, "dim": 32, "n_head": 2, "ffn": "gelu_tanh", "vocab_size": 300},
            "AutoModelForCausalLM",
        ),
    ],
)
def test_hf_folder_loads_in_transformers_with_equal_outputs(name, overrides, auto, tmp_path):
    transformers = pytest.importorskip("transformers")
    model = create_model(name, **overrides).eval()
    result = export_model(model, "hf", tmp_path / "hf")
    assert {"config.json", "model.safetensors"} <= set(result.files)
    assert result.checks[0].max_abs_diff <= TOLERANCE
    theirs = getattr(transformers, auto).from_pretrained(str(tmp_path / "hf")).eval()
    ids, mask = padded_tokens(model.cfg.vocab_size, t=8)
    with torch.no_grad():
        if name.startswith("bert"):
            ours, out = model(ids, mask), theirs(input_ids=ids, attention_mask=mask).logits
            if ours.ndim == 3:
                ours, out = ours[mask.bool()], out[mask.bool()]
        else:
            ours, out = model(ids), theirs(input_ids=ids).logits
    assert (ours - out).abs().max() <= TOLERANCE
    # and back: the same key map imports the folder into an equal model
    from neuratlas.api import load_model

    back = load_model(tmp_path / "hf")
    if name.startswith("gpt"):
        with torch.no_grad():
            assert torch.equal(back(ids), model(ids))


def test_minilm_hf_folder_is_a_sentence_encoder_with_its_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    from neuratlas.data.text import PRETRAINED

    try:
        PRETRAINED["all-MiniLM-L6-v2"].locate()
    except NeuratlasError:
        pytest.skip("all-MiniLM-L6-v2 is not installed")
    model = create_model("minilm-l6").eval()
    result = export_model(model, "hf", tmp_path / "minilm")
    assert {"tokenizer.json", "vocab.txt", "config.json", "model.safetensors"} <= set(result.files)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "minilm"))
    theirs = transformers.AutoModel.from_pretrained(str(tmp_path / "minilm")).eval()
    batch = tok(["a cat sits on the mat", "export me"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model.encode(batch["input_ids"], batch["attention_mask"])
        out = theirs(**batch).last_hidden_state
    m = batch["attention_mask"].bool()
    assert (ours[m] - out[m]).abs().max() < 1e-4


def test_gpt2_folder_carries_a_tokenizer_equal_to_tiktoken(tmp_path):
    """vocab.json/merges.txt rebuilt from tiktoken's ranks: transformers' GPT-2 tokenizer then encodes text
    exactly as the run's tokenizer did."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tiktoken")
    from neuratlas.text.tokenizers import GPT2Tokenizer

    try:
        ours = GPT2Tokenizer()
    except NeuratlasError as e:
        pytest.skip(f"GPT-2 ranks unavailable: {e}")
    model = create_model("gpt-mini", n_layer=1, dim=32, n_head=2, ffn="gelu_tanh").eval()
    result = export_model(model, "hf", tmp_path / "gpt2", tokenizer={"kind": "gpt2"})
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= set(result.files)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "gpt2"))
    text = (
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\nIt's 2026 — naïve café, 🎉 emoji, "
        "  spaces,\ttabs and numbers 3.14159<|endoftext|>"
    )
    assert theirs(text)["input_ids"] == ours.encode(text)


def test_hf_refuses_what_transformers_cannot_hold(tmp_path):
    with pytest.raises(NeuratlasError, match="GPT-2 needs"):
        export_model(create_model("transformer-modern", n_layer=1, dim=48), "hf", tmp_path / "o")
    with pytest.raises(NeuratlasError, match="no Hugging Face layout"):
        export_model(create_model("mlp-tiny"), "hf", tmp_path / "o")
    assert not list(tmp_path.iterdir())


# --- save_pretrained / load_model over the registry ---------------------------------------------------------

# Overrides that shrink the big layouts; models not listed build at their registered size.
SMALL = {
    **{n: {"n_layer": 1, "dim": 64, "n_head": 2} for n in ("bert-base", "gpt2-small", "gpt-mini", "gpt-char")},
    "resnet34": {"width": 8},
    "resnet18": {"width": 8},
    "transformer-2017-base": {"n_layer": 1, "vocab_size": 500, "src_vocab_size": 500},
    "vit-b16": {"n_layer": 1},
    "vit-s16": {"n_layer": 1},
    "vit-ti16": {"n_layer": 1},
    "resnet152": {"width": 8},
    "resnet101": {"width": 8},
    "resnet50": {"width": 8},
    "plain110-cifar": {"depth": 8},
    "resnet110-cifar": {"depth": 8},
    "plain56-cifar": {"depth": 8},
    "resnet56-cifar": {"depth": 8},
    **{f"efficientnet-b{i}": {"depth_mult": 0.25, "width_mult": 0.25} for i in range(1, 8)},
}


def _registry_names() -> list[str]:
    return MODELS.names()


@pytest.mark.parametrize("name", _registry_names())
def test_save_pretrained_and_load_model_round_trip(name, tmp_path):
    entry = MODELS.get(name)
    if entry.defaults.get("pretrained") or any("pretrained" in str(v) for v in entry.defaults.values()):
        try:
            model = create_model(name, **SMALL.get(name, {}))
        except NeuratlasError as e:  # its real weights are not installed
            pytest.skip(f"{name}: {e}")
    else:
        model = create_model(name, **SMALL.get(name, {}))
    model.eval()
    model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"config.json", "model.safetensors"}
    back = neuratlas.load_model(tmp_path / "m")
    assert type(back) is type(model) and back.model_name == name
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_load_model_takes_runs_names_and_rejects_the_rest(tmp_path):
    assert neuratlas.load_model("mlp-tiny").model_name == "mlp-tiny"
    with pytest.raises(NeuratlasError, match="neither"):
        neuratlas.load_model("no-such-model")
    (tmp_path / "config.json").write_text(
        json.dumps({"format": "neuratlas-pretrained", "model_name": "mlp-tiny", "model_config": {}})
    )
    with pytest.raises(NeuratlasError, match="holds no model.safetensors"):
        neuratlas.load_model(tmp_path)


# --- runs and the CLI ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A run trained for a few steps on scikit-learn's digits (real data, seconds)."""
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    out = tmp_path_factory.mktemp("runs")
    run = get_recipe("mlp-digits").run_config(
        {"trainer.epochs": 1, "trainer.out_dir": str(out), "trainer.progress": False, "trainer.tensorboard": False}
    )
    trainer = Trainer(run)
    trainer.fit()
    return trainer.run_dir


def cli(capsys, *args: str) -> tuple[int, str, str]:
    from neuratlas.cli import main

    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_export_checks_on_the_validation_batch_and_refuses_bad_input(digits_run, tmp_path, capsys):
    out = str(tmp_path / "onnx")
    rc, stdout, stderr = cli(capsys, "export", str(digits_run), "--format", "onnx", "--out", out)
    assert rc == 0, stderr
    assert "validation batch" in stdout and re.search(r"max \|onnxruntime − eager\| \S+ \(ok\) on 180", stdout)
    assert "× eager's speed" in stdout
    errors = [cli(capsys, "export", str(digits_run), "--format", "onnx", "--out", out)]
    assert errors[-1][0] == 2 and "already exists" in errors[-1][2] and "--force" in errors[-1][2]
    args = ["export", str(digits_run), "--format", "pt2", "--out", out, "--force", "--device", "cpu"]
    rc, stdout, stderr = cli(capsys, *args)
    assert rc == 0, stderr
    assert re.search(r"max \|torch.export − eager\| \S+ \(ok\) on 180 samples; .* \(\d+ threads?\)", stdout), stdout
    assert {p.name for p in Path(out).iterdir()} == {"model.pt2", "export.json"}  # replaced whole
    assert json.loads((Path(out) / "export.json").read_text())["files"]["model.pt2"]["check"]["device"] == "cpu"
    errors.append(cli(capsys, "export", str(digits_run), "--format", "tflite"))
    assert errors[-1][0] == 2 and "--format: 'tflite' is not one of onnx, pt2, hf" in errors[-1][2]
    empty = tmp_path / "empty-run"
    empty.mkdir()
    errors.append(cli(capsys, "export", str(empty), "--format", "pt2"))
    assert errors[-1][0] == 2 and "holds no checkpoint" in errors[-1][2]
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(foreign))
    errors.append(cli(capsys, "export", str(foreign), "--format", "onnx", "--out", str(tmp_path / "f")))
    assert errors[-1][0] == 2 and "not a Neuratlas checkpoint" in errors[-1][2]
    for _, _, stderr in errors:
        assert stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "f").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_run_saves_loads_and_predicts_on_arrays(digits_run, tmp_path):
    model = neuratlas.load_model(digits_run)
    model.save_pretrained(tmp_path / "digits")
    back = neuratlas.load_model(tmp_path / "digits")
    x = np.random.default_rng(0).random((8, 8))
    lines = neuratlas.predict(back, [x, x * 16], out_dir=tmp_path / "p")
    assert len(lines) == 2 and lines[0].startswith("array 0:") and lines[1].startswith("array 1:")
    assert neuratlas.predict(model, [x], out_dir=tmp_path / "p") == lines[:1]
    with pytest.raises(NeuratlasError, match="no task"):
        neuratlas.predict(create_model("mlp-tiny"), [x])


def test_readme_python_api_runs(tmp_path, monkeypatch):
    """The README's "Python API" block, with its run shortened to one epoch."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Python API.*?```python\n(.*?)```", text, re.S).group(1)
    code = block.replace('"trainer.epochs": 30', '"trainer.epochs": 1')
    assert code != block, "the README's example sets trainer.epochs: 30"
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "exported" / "model.onnx").is_file()
