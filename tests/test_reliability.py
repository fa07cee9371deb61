"""What Neuratlas promises about bad input and interrupted work, checked in-process (fast): checkpoints as one
unit with a fallback, the old layout still resuming, files that declare more than they hold refused before
allocation, config ranges at the boundary, run folders never overwritten, overrides on resume taking effect.
The kill/SIGTERM/full-disk checks that need a subprocess are in test_faults.py."""

import json
import shutil
import time
import zipfile

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from neuratlas.errors import NeuratlasError
from neuratlas.models import create_model
from neuratlas.models.checkpoint import load_state, read_checkpoint, save_weights, step_folders
from neuratlas.recipes import get_recipe
from neuratlas.training.config import RunConfig
from neuratlas.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def digits(run_overrides, **extra) -> RunConfig:
    return get_recipe("mlp-digits").run_config({**run_overrides, "trainer.loggers": "csv", **extra})


def rewrite_metadata(src, dst, **changes):
    """A copy of checkpoint ``src`` with metadata entries replaced (what a hostile or damaged file holds)."""
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    save_file(load_file(str(src)), str(dst), metadata={**meta, **changes})
    return dst


@pytest.fixture
def small_ckpt(tmp_path):
    model = create_model("mlp-tiny", in_features=64)
    return save_weights(tmp_path / "small.safetensors", model, {}, {"task": "classification"}, 3)


# --- checkpoints --------------------------------------------------------------------------------------
def test_checkpoint_is_one_unit_with_a_fallback(run_overrides):
    run = digits(
        run_overrides,
        **{"trainer.max_steps": "12", "trainer.save_every": "4", "trainer.eval_every": "100", "trainer.run_name": "u"},
    )
    t = Trainer(run)
    t.fit()
    folders = step_folders(t.ckpt_dir)
    assert [f.name for f in folders] == ["step-000000012", "step-000000008"]  # the newest and one fallback
    last = t.ckpt_dir / "last.safetensors"
    assert last.samefile(folders[0] / "model.safetensors")
    assert not list(t.ckpt_dir.glob(".step-*")) and not (t.ckpt_dir / "last.state.pt").exists()
    # a damaged newest folder: resume says so and continues from the one before
    (folders[0] / "state.pt").write_bytes(b"PK\x03\x04 damaged")
    c = Trainer(run)
    c.resume(t.run_dir)
    assert c.step == 8
    # a half-written folder (a kill mid-save) is not a checkpoint
    half = t.ckpt_dir / ".step-000000016.abc.tmp"
    half.mkdir()
    (half / "model.safetensors").write_bytes(last.read_bytes())
    assert Trainer(run).resume(t.run_dir) is None and step_folders(t.ckpt_dir)[0] == folders[0]


def test_old_layout_still_resumes(run_overrides):
    """A run written before step folders (last.safetensors + last.state.pt) resumes as it did."""
    common = {
        "trainer.max_steps": "10",
        "trainer.save_every": "5",
        "trainer.eval_every": "100",
        "trainer.precision": "fp32",
    }
    a = Trainer(digits(run_overrides, **common, **{"trainer.run_name": "a"}))
    a.fit()
    d_dir = a.run_dir.parent / "d" / "checkpoints"
    d_dir.mkdir(parents=True)
    step5 = Trainer(digits(run_overrides, **common, **{"trainer.run_name": "e"}))
    with pytest.raises(KeyboardInterrupt):
        step5.fit(crash_at=6)
    src = step_folders(step5.ckpt_dir)[0]
    shutil.copy(src / "model.safetensors", d_dir / "last.safetensors")
    shutil.copy(src / "state.pt", d_dir / "last.state.pt")
    d = Trainer(digits(run_overrides, **common, **{"trainer.run_name": "d"}))
    d.fit(resume=d_dir.parent)
    assert d.step == 10
    for (name, pa), pd in zip(a.model.state_dict().items(), d.model.state_dict().values()):
        assert torch.equal(pa, pd), name


def test_trainer_state_bombs_are_refused(tmp_path):
    big = tmp_path / "deflated.pt"
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data/0", b"\0" * (8 << 20))  # 8 MiB of zeros in a few KiB
    assert big.stat().st_size < 100_000
    with pytest.raises(NeuratlasError, match="compressed entries"):
        load_state(big)
    plain = tmp_path / "plain.pt"
    torch.save({"step": 1, "x": torch.zeros(1 << 18)}, plain)
    with pytest.raises(NeuratlasError, match="over the limit"):
        load_state(plain, max_bytes=1 << 18)
    assert load_state(plain)["step"] == 1


@pytest.mark.parametrize(
    "config, message",
    [
        ({"in_features": 64, "hidden": [32000, 32000], "num_classes": 10}, "refused before allocating"),
        ({"in_features": 64, "hidden": [64] * 100000, "num_classes": 10}, "refused before allocating"),
        ({"in_features": 64, "hidden": [65], "num_classes": 10}, "do not fit"),
    ],
)
def test_metadata_declaring_a_larger_model_is_refused_before_allocation(small_ckpt, tmp_path, config, message):
    bomb = rewrite_metadata(small_ckpt, tmp_path / "bomb.safetensors", model_config=json.dumps(config))
    t0 = time.perf_counter()
    with pytest.raises(NeuratlasError, match=message):
        read_checkpoint(bomb).build_model()
    assert time.perf_counter() - t0 < 20  # not minutes of building (the bound is generous for a shared CPU)


def test_resnet_of_absurd_depth_is_refused_quickly(tmp_path):
    model = create_model("resnet18", num_classes=10, width=8)
    path = save_weights(tmp_path / "r.safetensors", model, {}, {}, 0)
    cfg = read_checkpoint(path).model_config
    for style, depth, message in (
        ("imagenet", 600_000_000, "depth must be one of"),
        ("cifar", 600_000_002, "refused before allocating"),
    ):
        bomb = rewrite_metadata(
            path, tmp_path / "deep.safetensors", model_config=json.dumps({**cfg, "depth": depth, "style": style})
        )
        with pytest.raises(NeuratlasError, match=message) as e:
            read_checkpoint(bomb).build_model()
        assert str(e.value).startswith(f"{bomb}: ")  # the file is what is wrong: it is named


@pytest.mark.parametrize(
    "entry, value",
    [
        ("model_config", "[1, 2]"),
        ("model_config", "null"),
        ("run_config", "7"),
        ("model_config", "[" * 10_000 + "]" * 10_000),
        ("extra", '{"a": ' * 5000 + "1" + "}" * 5000),
        ("model_config", "{not json"),
        ("step", "-4"),
        ("step", "many"),
    ],
)
def test_damaged_metadata_is_one_line(small_ckpt, tmp_path, entry, value):
    bad = rewrite_metadata(small_ckpt, tmp_path / "bad.safetensors", **{entry: value})
    with pytest.raises(NeuratlasError, match="damaged Neuratlas metadata"):
        read_checkpoint(bad)


def test_non_finite_weights_are_refused(small_ckpt, tmp_path):
    tensors = {k: torch.full_like(v, float("nan")) for k, v in load_file(str(small_ckpt)).items()}
    with safe_open(str(small_ckpt), framework="pt") as f:
        meta = f.metadata()
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=meta)
    with pytest.raises(NeuratlasError, match="NaN or infinite"):
        read_checkpoint(tmp_path / "nan.safetensors").build_model()


# --- configs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("trainer.max_steps", "0", "max_steps must be in"),
        ("trainer.max_steps", "-1", "max_steps must be in"),
        ("trainer.epochs", "0", "epochs must be in"),
        ("trainer.grad_accum", "0", "grad_accum must be in"),
        ("trainer.num_threads", "0", "num_threads must be in"),
        ("trainer.eval_every", "0", "eval_every"),
        ("trainer.save_every", "-3", "save_every"),
        ("trainer.log_every", "0", "log_every"),
        ("trainer.time_limit", "0", "time_limit"),
        ("trainer.grad_clip", "nan", "grad_clip"),
        ("trainer.ema_decay", "1", "ema_decay"),
        ("trainer.seed", "-1", "seed"),
        ("trainer.early_stop_patience", "-2", "early_stop_patience"),
        ("optimizer.lr", "-1", "lr must be in"),
        ("optimizer.lr", "nan", "lr must be a finite"),
        ("optimizer.lr", "inf", "lr must be a finite"),
        ("optimizer.eps", "0", "eps"),
        ("optimizer.momentum", "1.5", "momentum"),
        ("optimizer.betas", "0.9,1.2", "betas"),
        ("optimizer.weight_decay", "-0.1", "weight_decay"),
        ("schedule.warmup_steps", "-1", "warmup_steps"),
        ("schedule.warmup_frac", "1", "warmup_frac"),
        ("schedule.step_size", "0", "step_size"),
        ("schedule.pct_start", "0", "pct_start"),
        ("schedule.min_lr_ratio", "2", "min_lr_ratio"),
        ("schedule.gamma", "0", "gamma"),
        ("transfer.lora_rank", "-1", "lora_rank"),
        ("transfer.lr_decay", "0", "lr_decay"),
        ("transfer.lora_alpha", "0", "lora_alpha"),
        ("transfer.unfreeze_every", "-5", "unfreeze_every"),
        ("data.batch_size", "0", "batch size must be"),
        ("data.eval_batch_size", "-1", "batch size must be"),
        ("trainer.run_name", "../escaped", "plain name"),  # escape attempt
        ("trainer.run_name", "a/b", "plain name"),
        ("trainer.run_name", "x" * 300, "at most 120"),
        ("trainer.run_name", "", "plain name"),
    ],
)
def test_config_ranges_are_refused_by_name(run_overrides, key, value, message):
    with pytest.raises(NeuratlasError, match=message):
        run = digits(run_overrides, **{key: value})
        Trainer(run)  # data-spec values are checked when the data is built


def test_device_missing_from_the_build_is_one_line(run_overrides):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(NeuratlasError, match="sees no CUDA GPU"):
        Trainer(digits(run_overrides, **{"trainer.device": "cuda"}))
    with pytest.raises(NeuratlasError, match="is not a device"):
        Trainer(digits(run_overrides, **{"trainer.device": "gpu0"}))


# --- run folders --------------------------------------------------------------------------------------
def test_run_folders_are_never_overwritten_silently(run_overrides):
    over = {"trainer.max_steps": "2", "trainer.eval_every": "100"}
    first = Trainer(digits(run_overrides, **over, **{"trainer.run_name": "same"}))
    first.fit()
    with pytest.raises(NeuratlasError, match="already exists; continue it with --resume"):
        Trainer(digits(run_overrides, **over, **{"trainer.run_name": "same"})).fit()
    marker = first.run_dir / "from-the-first-run"
    marker.write_text("x")
    again = Trainer(digits(run_overrides, **over, **{"trainer.run_name": "same", "trainer.overwrite": "true"}))
    again.fit()
    assert not marker.exists() and again.step == 2  # emptied first: no file of the old run is mistaken as new
    names = {Trainer(digits(run_overrides, **over)).run_dir.name for _ in range(3)}
    assert len(names) == 3  # default names started in the same second differ
    assert all(n.startswith("mlp-tiny-") for n in names)


def test_overrides_on_resume_take_effect(run_overrides):
    over = {
        "trainer.max_steps": "6",
        "trainer.save_every": "3",
        "trainer.eval_every": "100",
        "trainer.run_name": "r",
        "schedule.name": "constant",
    }
    t = Trainer(digits(run_overrides, **over))
    t.fit()
    r = Trainer(digits(run_overrides, **{**over, "optimizer.lr": "1e-5", "trainer.max_steps": "9"}))
    r.resume(t.run_dir)
    assert r.total_steps == 9 and r.step == 6
    assert all(g["lr"] == pytest.approx(1e-5) for g in r.optimizer.param_groups)
    assert r.schedulers[0].base_lrs == pytest.approx([1e-5] * len(r.optimizer.param_groups))
    same = Trainer(digits(run_overrides, **over))  # without overrides nothing changes (exact resume)
    same.resume(t.run_dir)
    assert [g["lr"] for g in same.optimizer.param_groups] == [g["lr"] for g in t.optimizer.param_groups] != [1e-5]


# --- inputs: the cache ----------------------------------------------------------------------------------
def test_a_corrupt_cached_file_never_shadows_the_offline_copy(tmp_path, monkeypatch, capsys):
    from neuratlas.data.images import FASHION_MNIST
    from neuratlas.sources import cache_dir

    offline = FASHION_MNIST.offline[0]()
    if not FASHION_MNIST._complete(offline):
        pytest.skip("the offline Fashion-MNIST copy is not installed")
    monkeypatch.setenv("NEURATLAS_CACHE", str(tmp_path / "cache"))
    cached = cache_dir(FASHION_MNIST.name)
    cached.mkdir(parents=True)
    for name in FASHION_MNIST.files:
        shutil.copy(offline / name, cached / name)
    assert FASHION_MNIST.locate() == (cached, f"cache {cached}")  # a good cache is used
    bad = cached / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:1000])  # truncated (an interrupted copy)
    folder, source = FASHION_MNIST.locate()
    assert folder == offline and source.startswith("offline")
    err = capsys.readouterr().err
    assert str(bad) in err and "does not match its checksum" in err
    assert not bad.exists()  # removed, so the next run does not trip over it again


def test_a_model_too_large_to_allocate_is_refused_before_allocation(run_overrides):
    from neuratlas.models.budget import check_model_fits

    t0 = time.perf_counter()
    with pytest.raises(NeuratlasError, match="too large for this machine"):
        Trainer(digits(run_overrides, **{"model.hidden": "[1000000000]"}))  # 64 G parameters
    with pytest.raises(NeuratlasError, match="more than 100 modules"):
        check_model_fits("mlp", {"in_features": 4, "hidden": [2] * 500, "num_classes": 2}, max_modules=100)
    assert time.perf_counter() - t0 < 30
    check_model_fits("mlp-tiny", {"in_features": 64}, memory=1 << 20)  # 4,810 parameters fit in 1 MiB
    with pytest.raises(NeuratlasError, match="too large"):
        check_model_fits("mlp-tiny", {"in_features": 64}, memory=1 << 14)


# --- inputs: images, arrays and pickles that declare more than they hold ----------------------------------
def png_header(path, width: int, height: int):
    """A PNG whose header claims ``width`` × ``height`` RGB pixels, with (almost) no pixel data: what a
    decompression bomb looks like to a reader that trusts the header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def bmp_header(path, width: int, height: int):
    """A 24-bit BMP header claiming ``width`` × ``height`` pixels, followed by no pixels."""
    import struct

    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    path.write_bytes(b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info)
    return path


def pickle_bomb(levels: int = 12, width: int = 40) -> bytes:
    """A protocol-2 pickle of nested lists, each level ``width`` memo references to the level below: about
    1 KB that unpickles instantly and expands to width ** levels elements when iterated."""
    out = bytearray(b"\x80\x02]q\x00(" + b"N" * width + b"e")
    for i in range(1, levels):
        out += b"]q" + bytes([i]) + b"(" + (b"h" + bytes([i - 1])) * width + b"e"
    return bytes(out + b".")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A trained mlp-digits run (2 steps): what `predict` and `eval` are given."""
    out = tmp_path_factory.mktemp("runs")
    run = get_recipe("mlp-digits").run_config(
        {
            "trainer.out_dir": str(out),
            "trainer.progress": "false",
            "trainer.loggers": "csv",
            "trainer.max_steps": "2",
            "trainer.run_name": "r",
        }
    )
    Trainer(run).fit()
    return out / "r"


def one_error_line(argv, capsys) -> str:
    from neuratlas.cli import main

    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, (code, err)
    assert "Traceback" not in err and "unexpected" not in err and "Decompression" not in err, err
    return err


def test_huge_images_are_refused_from_their_header(digits_run, tmp_path, capsys):
    import warnings

    from neuratlas.data.guards import TooLarge, check_pixels, open_image

    big = png_header(tmp_path / "big.png", 20_000, 20_000)  # 400 MP: over Pillow's own error threshold too
    mid = bmp_header(tmp_path / "mid.bmp", 12_000, 12_000)  # 144 MP: only Pillow's warning, our refusal
    assert big.stat().st_size < 2000 and mid.stat().st_size < 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail the test
        for path in (big, mid):
            with pytest.raises(TooLarge, match="refused before decoding"), open_image(path):
                pass
    with pytest.raises(TooLarge, match="memory available"):
        check_pixels(4000, 3000, "RGB", memory=100 << 20)  # 12 MP fits the pixel limit, not 100 MiB
    check_pixels(4000, 3000, "RGB", memory=1 << 30)
    for path in (big, mid):
        err = one_error_line(["predict", digits_run, path, "--out", tmp_path / "out"], capsys)
        assert str(path) in err and "refused before decoding" in err
    # in an image folder: listed as unusable with the reason, and with on_bad=error it stops, naming it
    from PIL import Image

    from neuratlas.cli import main

    for c in ("a", "b"):
        (tmp_path / "folder" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "folder" / c / f"{i}.png")
    png_header(tmp_path / "folder" / "a" / "bomb.png", 20_000, 20_000)
    bmp_header(tmp_path / "folder" / "b" / "bomb.bmp", 12_000, 12_000)
    common = ["data", "inspect", "--data.name", "image-folder", "--data.root", tmp_path / "folder", "--sheet", ""]
    assert main([str(a) for a in common]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Decompression" not in out + err
    assert sum("bomb" in line and "refused before decoding" in line for line in out.splitlines()) == 2, out
    err = one_error_line([*common, "--data.on_bad", "error"], capsys)
    assert "bomb" in err and "refused before decoding" in err


def test_npy_files_of_objects_or_forged_shapes_are_one_line(digits_run, tmp_path, capsys):
    from neuratlas.data.guards import load_npy

    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    forged = tmp_path / "forged.npy"
    with open(forged, "wb") as f:  # a header declaring 4 TB of floats, then 256 bytes
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
        f.write(b"\0" * 256)
    with pytest.raises(NeuratlasError, match="holds Python objects"):
        load_npy(objects)
    with pytest.raises(NeuratlasError, match="declares shape"):
        load_npy(forged)
    np.save(tmp_path / "ok.npy", np.ones((8, 8), np.float32))
    assert load_npy(tmp_path / "ok.npy").sum() == 64
    for path, message in ((objects, "holds Python objects"), (forged, "declares shape")):
        err = one_error_line(["predict", digits_run, path, "--out", tmp_path / "out"], capsys)
        assert str(path) in err and message in err


def test_planetoid_pickle_bombs_are_refused(tmp_path):
    import gzip
    import pickle
    from pathlib import Path

    from neuratlas.data.graphs import read_planetoid, restricted_load

    bomb = pickle_bomb()
    assert len(bomb) < 1100 and len(pickle.loads(bomb)) == 40  # 40 ** 12 elements once iterated
    t0 = time.perf_counter()
    with pytest.raises(NeuratlasError, match=r"ind\.cora\.graph: not a genuine Planetoid file: it expands"):
        restricted_load(bomb, "ind.cora.graph")
    assert time.perf_counter() - t0 < 5  # measured, not expanded (the bound is generous for a shared CPU)
    cycle = b"\x80\x02]q\x00h\x00a."  # a list containing itself
    huge = b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x40\x85R."  # ndarray((2**30,)): 8 GiB if allocated
    rebuilt = (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\x00\x00\x40\x85"
        b"C\x01b\x87R."
    )  # numpy's own constructor, asked for 2**30 elements
    for data, message in ((cycle, "contains itself"), (huge, "asks for an array"), (rebuilt, "asks for an array")):
        with pytest.raises(NeuratlasError, match=message):
            restricted_load(data, "ind.cora.x")
    objects = pickle.dumps(np.array([[1], None], dtype=object), protocol=2)
    with pytest.raises(NeuratlasError, match="Python objects|refusing to unpickle"):
        restricted_load(objects, "ind.cora.y")
    # the genuine files still read, and a bomb among them stops the data set with one line naming it
    bundled = Path(__file__).parents[1] / "src/neuratlas/data/bundled/planetoid-cora"
    folder = tmp_path / "cora"
    folder.mkdir()
    for f in bundled.glob("ind.cora.*.gz"):
        (folder / f.stem).write_bytes(gzip.decompress(f.read_bytes()))
    assert read_planetoid(folder).x.shape == (2708, 1433)
    (folder / "ind.cora.graph").write_bytes(bomb)
    with pytest.raises(NeuratlasError, match=str(folder / "ind.cora.graph")):
        read_planetoid(folder)
    (folder / "ind.cora.graph").write_bytes(pickle.dumps([1, 2, 3], protocol=2))  # unpickles, wrong type
    with pytest.raises(NeuratlasError, match="do not form a Planetoid data set"):
        read_planetoid(folder)


def test_all_nan_checkpoint_is_refused_by_predict_and_eval(digits_run, tmp_path, capsys):
    ckpt = digits_run / "checkpoints" / "last.safetensors"
    tensors = {k: torch.full_like(v, float("nan")) for k, v in load_file(str(ckpt)).items()}
    with safe_open(str(ckpt), framework="pt") as f:
        meta = f.metadata()
    nan = tmp_path / "nan.safetensors"
    save_file(tensors, str(nan), metadata=meta)
    digit = tmp_path / "digit.npy"
    np.save(digit, np.zeros((8, 8), np.float32))
    for argv in (["predict", nan, digit, "--out", tmp_path / "out"], ["eval", nan]):
        err = one_error_line(argv, capsys)
        assert str(nan) in err and "NaN or infinite" in err


def test_an_empty_validation_split_is_one_line_not_a_division_by_zero(run_overrides):
    run = digits(run_overrides, **{"trainer.max_steps": "2", "data.val_size": "0", "trainer.run_name": "empty-val"})
    with pytest.raises(NeuratlasError, match="split is empty"):
        Trainer(run).fit()
