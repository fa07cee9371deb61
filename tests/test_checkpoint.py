"""Checkpoints: atomic, rebuildable, and every bad file gives a one-line error naming the problem."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from neuratlas.errors import NeuratlasError
from neuratlas.models.checkpoint import read_checkpoint, save_weights
from neuratlas.recipes import get_recipe
from neuratlas.training.trainer import Trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    run = get_recipe("mlp-digits").run_config(
        {
            "trainer.out_dir": str(out),
            "trainer.progress": "false",
            "trainer.loggers": "csv",
            "trainer.max_steps": "40",
            "trainer.run_name": "digits",
        }
    )
    trainer = Trainer(run)
    trainer.fit()
    return trainer


def test_roundtrip_rebuilds_identical_model(trained):
    ckpt = read_checkpoint(trained.run_dir)
    assert ckpt.model_name == "mlp-tiny" and ckpt.extra["classes"][0] == "0"
    model = read_checkpoint(trained.ckpt_dir / "last.safetensors").build_model()
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(model.eval()(x), trained.model.eval()(x))
    assert not list(trained.ckpt_dir.glob("*.tmp"))  # atomic writes leave no temp files


def test_truncated_checkpoint(trained, tmp_path):
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes((trained.ckpt_dir / "last.safetensors").read_bytes()[:200])
    with pytest.raises(NeuratlasError, match="truncated or corrupt"):
        read_checkpoint(bad)


def test_truncated_checkpoint_whose_header_length_looks_like_a_pickle(tmp_path):
    """A header length of 0x280 + … starts the file with bytes 0x80 0x02, a pickle's PROTO 2 opcode; it
    once read as "a pickled PyTorch file" when truncated (flaky: the length varies with the metadata)."""
    for n in range(1000):
        path = tmp_path / "w.safetensors"
        save_file({"w": torch.zeros(2)}, path, metadata={"pad": "x" * n})
        if path.read_bytes()[:2] == b"\x80\x02":
            break
    else:
        pytest.fail("no metadata size gave a header length of 0x2.80")
    with pytest.raises(NeuratlasError, match="not a Neuratlas checkpoint"):
        read_checkpoint(path)  # whole: read as safetensors
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(NeuratlasError, match="truncated or corrupt"):
        read_checkpoint(path)


def test_foreign_and_pickled_files(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(NeuratlasError, match="not a Neuratlas checkpoint"):
        read_checkpoint(foreign)
    pickled = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(2)}, pickled)
    with pytest.raises(NeuratlasError, match="refuses to unpickle"):
        read_checkpoint(pickled)
    torch.save({"w": torch.zeros(2)}, pickled, _use_new_zipfile_serialization=False)  # a bare pickle
    with pytest.raises(NeuratlasError, match="refuses to unpickle"):
        read_checkpoint(pickled)
    with pytest.raises(NeuratlasError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(NeuratlasError, match="holds no checkpoint"):
        read_checkpoint(tmp_path)


def test_weights_that_do_not_fit(trained, tmp_path):
    from neuratlas import create_model

    other = create_model("mlp", in_features=64)
    other.config = create_model("mlp-tiny", in_features=64).config  # metadata claims another architecture
    path = save_weights(tmp_path / "x.safetensors", other, {}, {}, 0)
    with pytest.raises(NeuratlasError, match="do not fit"):
        read_checkpoint(path).build_model()


def test_corrupt_state_file(trained, tmp_path):
    from neuratlas.models.checkpoint import step_folders

    states = [d / "state.pt" for d in step_folders(trained.ckpt_dir)]
    backups = [s.read_bytes() for s in states]
    try:
        for state, backup in zip(states, backups):
            state.write_bytes(backup[:100])
        with pytest.raises(NeuratlasError, match="trainer state .* unreadable"):
            Trainer(trained.run).resume(trained.run_dir)
    finally:
        for state, backup in zip(states, backups):
            state.write_bytes(backup)


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "neuratlas.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
        (["train", "mlp-digits", "--optimizer.lrr", "1"], "Did you mean --optimizer.lr"),
        (["train", "mlp-digits", "--model.hidden", "abc"], "expected an integer"),
        (["train", "mlp-digits", "--model.nope", "1"], "unknown option 'nope'"),
        (["eval", "/nonexistent/ckpt.safetensors"], "does not exist"),
    ],
)
def test_cli_errors_are_one_line(args, message):
    r = run_cli(*args, "--trainer.progress", "false") if args[0] == "train" else run_cli(*args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_eval_predict_visualize(trained, tmp_path):
    r = run_cli("eval", str(trained.run_dir))
    assert r.returncode == 0, r.stderr
    assert "test" in r.stdout and "accuracy" in r.stdout
    import numpy as np

    from neuratlas.data import load_dataset

    img = load_dataset({"name": "digits"}).test[0][0, 0].numpy()
    np.save(tmp_path / "digit.npy", img)
    r = run_cli("predict", str(trained.run_dir), str(tmp_path / "digit.npy"))
    assert r.returncode == 0 and "%" in r.stdout, r.stderr
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(b"\x10\x00\x00")
    r = run_cli("predict", str(truncated), str(tmp_path / "digit.npy"))
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_cli_visualize_cnn(tmp_path):
    run = get_recipe("lenet5-mnist5k").run_config(
        {
            "trainer.out_dir": str(tmp_path),
            "trainer.progress": "false",
            "trainer.loggers": "csv",
            "trainer.max_steps": "5",
            "trainer.run_name": "lenet",
        }
    )
    Trainer(run).fit()
    r = run_cli("visualize", str(tmp_path / "lenet"))
    assert r.returncode == 0, r.stderr
    pngs = sorted(p.name for p in (tmp_path / "lenet" / "visualize").glob("*.png"))
    assert pngs == ["activations_stage1.png", "activations_stage2.png", "filters_layer1.png"]


def test_pretrained_option_loads_once_and_never_from_a_checkpoint(tmp_path):
    """``pretrained`` is data: neuratlas.create_model loads the folder it names, the registry's builder and a
    checkpoint's build_model never read it (a checkpoint cannot send the loader to another location)."""
    transformers = pytest.importorskip("transformers")
    from neuratlas import create_model
    from neuratlas.models import create_model as build_only

    torch.manual_seed(0)
    hc = transformers.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
    )
    folder = tmp_path / "hf-bert"
    transformers.BertModel(hc).eval().save_pretrained(folder)
    dims = dict(vocab_size=99, dim=32, n_layer=2, n_head=4, ffn_dim=64, max_seq_len=40, pooling="mean")
    loaded = create_model("bert-mini", pretrained=str(folder), **dims).eval()
    built = build_only("bert-mini", pretrained=str(folder), **dims).eval()
    ref = transformers.BertModel.from_pretrained(str(folder)).eval()
    ids = torch.randint(0, 99, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(ids), ref(input_ids=ids).last_hidden_state, atol=1e-4, rtol=1e-4)
        assert not torch.equal(built.embed.tok.weight, loaded.embed.tok.weight)  # the builder read nothing
    path = save_weights(tmp_path / "ckpt.safetensors", loaded, {}, {}, 0)
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()  # the folder the config names is gone: rebuilding must not look for it
    rebuilt = read_checkpoint(path).build_model().eval()
    assert rebuilt.cfg.pretrained == str(folder)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.encode(ids), loaded.encode(ids))
    with pytest.raises(NeuratlasError, match="neither one of all-MiniLM-L6-v2 nor a Hugging Face model folder"):
        create_model("bert-mini", pretrained=str(folder), **dims)
