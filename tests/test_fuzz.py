"""Fuzzing the boundaries with a seeded generator (reproducible; each part bounded in time, about a minute in
all): random overrides of random recipes' configs up to the trainer's construction (no training), damaged
copies of a real checkpoint through ``neuratlas eval`` / ``predict``, of a real GGUF file through ``neuratlas
generate`` and of real image files through ``neuratlas predict``. Every outcome is a success or one ``error:``
line: never a traceback, never "unexpected", never a file written outside the output folder."""

import io
import json
import random
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from neuratlas.cli import main
from neuratlas.errors import NeuratlasError
from neuratlas.recipes import RECIPES, get_recipe
from neuratlas.text.tokenizers import bytes_to_unicode
from neuratlas.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

VALUES = [
    "0",
    "-1",
    "1",
    "2",
    "-0",
    "1e400",
    "-1e400",
    "1e308",
    "99999999999999999999999",
    "nan",
    "inf",
    "-inf",
    "0.5",
    "1.5",
    "",
    " ",
    "true",
    "false",
    "none",
    "null",
    "[]",
    "[1e9]",
    "[0]",
    "[-3, 2]",
    "{}",
    '{"a": 1}',
    "été",
    "\u202e",
    "日本語",
    "💥",
    "../../etc",  # escape attempt
    "a/b",
    "x" * 300,
    "\x00",
    "1,2,3",
    "[[[[[]]]]]",
    "0x10",
    "3.0",
    "-2.5",
    "1e-30",
    "cuda",
    "cpu",
    "fp32",
    "bf16",
    "adamw",
    "cosine",
]
# recipes whose data or model construction is heavy (large downloads-at-hand, pretrained weights): their
# configs are still parsed and validated, but the trainer is not built for them in the time budget
LIGHT = {"mlp-digits", "convnet-fashion-quick", "lenet5-mnist5k"}


def random_overrides(rng: random.Random, run: dict) -> dict[str, str]:
    keys = [f"{s}.{k}" for s, values in run.items() if isinstance(values, dict) for k in values if k != "name"]
    picked = rng.sample(keys, k=min(len(keys), rng.randint(1, 3)))
    if rng.random() < 0.1:
        picked.append(rng.choice(["trainer.nope", "model.", "nosection.x", ".lr"]))
    return {k: rng.choice(VALUES) for k in picked}


def test_fuzz_recipe_overrides(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = random.Random(2026)
    names = [n for n in RECIPES.names() if not get_recipe(n).run_config().sections]
    outcomes = {"accepted": 0, "refused": 0}
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 20:
        name = rng.choice(names)
        recipe = get_recipe(name)
        base = recipe.run_config({}).to_dict()
        over = random_overrides(rng, base)
        over.update({"trainer.out_dir": str(tmp_path / "runs"), "trainer.progress": "false"})
        try:
            run = recipe.run_config(over)
            if name in LIGHT:
                Trainer(run)
            outcomes["accepted"] += 1
        except NeuratlasError as e:
            assert "\n" not in str(e).strip(), (name, over, str(e))
            outcomes["refused"] += 1
        except Exception as e:  # noqa: BLE001 (what the fuzz looks for)
            pytest.fail(f"{name} {over}: {type(e).__name__}: {e}")
        # the --help path of the CLI with the same overrides
        argv = ["train", name, "--help", *[a for k, v in over.items() for a in (f"--{k}", v)]]
        code = main(argv)
        out, err = capsys.readouterr()
        assert code in (0, 2) and "unexpected" not in err and "Traceback" not in err, (argv, err)
    assert not list((tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else True  # nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["runs"])
    print(f"config fuzz: {sum(outcomes.values())} cases, {outcomes}")
    assert outcomes["refused"] > 0 and sum(outcomes.values()) >= 10


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz")
    run = get_recipe("mlp-digits").run_config(
        {
            "trainer.out_dir": str(out),
            "trainer.progress": "false",
            "trainer.loggers": "csv",
            "trainer.max_steps": "5",
            "trainer.run_name": "r",
        }
    )
    Trainer(run).fit()
    return out / "r" / "checkpoints" / "last.safetensors"


def mutations(rng: random.Random, data: bytes):
    """Damaged variants of a safetensors file: truncations, flipped bytes, a forged header length, a header
    whose JSON is edited (shapes, dtypes, offsets, metadata), random bytes."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    kind = rng.choice(["truncate", "flip", "length", "header", "meta", "random"])
    if kind == "truncate":
        return kind, data[: rng.randrange(len(data))]
    if kind == "flip":
        b = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            i = rng.randrange(len(b) if rng.random() < 0.5 else 8 + n)
            b[i] = rng.randrange(256)
        return kind, bytes(b)
    if kind == "length":
        return kind, struct.pack("<Q", rng.choice([0, 1, n - 1, n + 1, 2**63, 2**40, len(data)])) + data[8:]
    if kind == "header":
        key = rng.choice([k for k in header if k != "__metadata__"])
        field = rng.choice(["shape", "dtype", "data_offsets"])
        header[key][field] = rng.choice([[10**9, 10**9], [-1], "F64", "X9", [0, 10**12], [], None, "💥"])
    else:  # meta
        entry = rng.choice(["model_config", "run_config", "extra", "step", "model_name", "format"])
        header["__metadata__"][entry] = rng.choice(
            [
                "[]",
                "null",
                "{}",
                "1e999",
                "-5",
                "nope",
                '{"hidden": [1e9]}',
                '{"in_features": -1}',
                "[" * 3000,
                '{"hidden": "abc"}',
                '{"task": {"name": "nope"}}',
                "resnet18",
                "💥",
            ]
        )
    if kind == "random":
        return kind, bytes(rng.randrange(256) for _ in range(rng.randint(0, 400)))
    h = json.dumps(header).encode()
    return kind, struct.pack("<Q", len(h)) + h + data[8 + n :]


def test_fuzz_damaged_checkpoints_through_eval_and_predict(checkpoint, tmp_path, monkeypatch, capsys):
    from neuratlas.data import load_dataset

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    digit = tmp_path / "digit.npy"
    np.save(digit, load_dataset({"name": "digits"}).test[0][0, 0].numpy())
    data = checkpoint.read_bytes()
    rng = random.Random(28)
    outcomes: dict[str, int] = {}
    t0 = time.perf_counter()
    i = 0
    while time.perf_counter() - t0 < 12:
        kind, damaged = mutations(rng, data)
        path = tmp_path / f"case{i}.safetensors"
        path.write_bytes(damaged)
        command = ["eval", str(path)] if i % 2 else ["predict", str(path), str(digit), "--out", str(work / "out")]
        code = main(command)
        out, err = capsys.readouterr()
        assert code in (0, 2), (kind, command, err)
        assert "unexpected" not in err and "Traceback" not in err, (kind, err)
        assert code == 0 or (err.startswith("error: ") and len(err.strip().splitlines()) == 1), (kind, err)
        assert "nan%" not in out.lower(), (kind, out)
        outcomes[f"{kind}:{'ok' if code == 0 else 'refused'}"] = (
            outcomes.get(f"{kind}:{'ok' if code == 0 else 'refused'}", 0) + 1
        )
        path.unlink()
        i += 1
    stray = [p for p in tmp_path.rglob("*") if p.is_file() and work / "out" not in p.parents and p != digit]
    assert not stray, stray  # nothing written outside the output folder
    assert not list(work.glob("runs"))
    print(f"checkpoint fuzz: {i} cases, {dict(sorted(outcomes.items()))}")
    assert i >= 10


def check_outcome(code: int, out: str, err: str, case) -> str:
    """A success or one ``error:`` line; never a traceback, "unexpected" or Pillow's bomb warning."""
    assert code in (0, 2), (case, code, err)
    assert "unexpected" not in err and "Traceback" not in err and "Warning" not in err, (case, err)
    assert code == 0 or (err.startswith("error: ") and len(err.strip().splitlines()) == 1), (case, err)
    return "ok" if code == 0 else "refused"


def byte_vocab() -> list[str]:
    """GPT-2's 256 byte characters, in byte order (the vocabulary of a byte-level BPE without merges)."""
    table = bytes_to_unicode()
    return [table[b] for b in range(256)]


def tiny_gguf(path: Path) -> Path:
    """A one-layer Llama written by the ``gguf`` package's writer (random weights, 100 KB). Its output norm
    is zero, so every logit is 0 and greedy decoding picks token 0, the end of text, at once: a file that
    survives a mutation generates in milliseconds without passing a token-count flag."""
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(0)
    vocab, dim, ffn, heads, kv_heads = 259, 32, 48, 4, 2
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(byte_vocab() + ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    w.add_token_types([1] * 256 + [3, 3, 3])
    w.add_token_merges([])
    w.add_bos_token_id(256)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)
    kv = kv_heads * dim // heads
    shapes = {
        "token_embd.weight": (vocab, dim),
        "output_norm.weight": (dim,),
        "output.weight": (vocab, dim),
        "blk.0.attn_norm.weight": (dim,),
        "blk.0.ffn_norm.weight": (dim,),
        "blk.0.attn_q.weight": (dim, dim),
        "blk.0.attn_k.weight": (kv, dim),
        "blk.0.attn_v.weight": (kv, dim),
        "blk.0.attn_output.weight": (dim, dim),
        "blk.0.ffn_gate.weight": (ffn, dim),
        "blk.0.ffn_up.weight": (ffn, dim),
        "blk.0.ffn_down.weight": (dim, ffn),
    }
    for name, shape in shapes.items():
        a = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        w.add_tensor(name, a * 0 if name == "output_norm.weight" else a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gguf_mutations(rng: random.Random, data: bytes, header: int):
    """Damaged variants of a GGUF file: truncations, flipped bytes (mostly in the header: keys, types, lengths,
    tensor dims and offsets), forged counts and string lengths, random bytes behind the magic."""
    kind = rng.choice(["truncate", "flip", "counts", "length", "random"])
    if kind == "truncate":
        return kind, data[: rng.randrange(len(data))]
    if kind == "flip":
        b = bytearray(data)
        for _ in range(rng.randint(1, 12)):
            b[rng.randrange(header if rng.random() < 0.8 else len(b))] = rng.randrange(256)
        return kind, bytes(b)
    big = rng.choice([0, 1, 2**31, 2**40, 2**63, 2**64 - 1])
    if kind == "counts":  # the tensor count (bytes 8-16) or the metadata count (16-24)
        at = rng.choice([8, 16])
        return kind, data[:at] + struct.pack("<Q", big) + data[at + 8 :]
    if kind == "length":  # the first key's length, or a later 8-byte field of the header
        at = 24 if rng.random() < 0.5 else rng.randrange(24, header - 8)
        return kind, data[:at] + struct.pack("<Q", big) + data[at + 8 :]
    return kind, b"GGUF" + bytes(rng.randrange(256) for _ in range(rng.randint(0, 600)))


def test_fuzz_damaged_gguf_files_through_generate(tmp_path, monkeypatch, capsys):
    good = tiny_gguf(tmp_path / "tiny.gguf")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["generate", str(good)]) == 0  # the undamaged file generates
    capsys.readouterr()
    data = good.read_bytes()
    header = data.index(b"token_embd.weight") + 200  # the tensor infos end shortly after the first name
    rng = random.Random(7)
    outcomes: dict[str, int] = {}
    t0, i = time.perf_counter(), 0
    while time.perf_counter() - t0 < 12:
        kind, damaged = gguf_mutations(rng, data, header)
        path = tmp_path / f"case{i}.gguf"
        path.write_bytes(damaged)
        code = main(["generate", str(path)])  # positional only: flag spellings may change
        out, err = capsys.readouterr()
        key = f"{kind}:{check_outcome(code, out, err, (kind, i))}"
        outcomes[key] = outcomes.get(key, 0) + 1
        path.unlink()
        i += 1
    assert not list(work.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf", "work"]
    print(f"gguf fuzz: {i} cases, {dict(sorted(outcomes.items()))}")
    assert i >= 10 and any(k.endswith("refused") for k in outcomes)


def image_files() -> dict[str, bytes]:
    """Small real image files in the formats users have: PNG (RGB, 16-bit grey, palette), JPEG, BMP, GIF."""
    from PIL import Image

    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8))
    made = {}
    for name, img, fmt in [
        ("rgb.png", rgb, "PNG"),
        ("grey16.png", Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16)), "PNG"),
        ("palette.png", rgb.convert("P"), "PNG"),
        ("photo.jpg", rgb, "JPEG"),
        ("plain.bmp", rgb, "BMP"),
        ("anim.gif", rgb.convert("P"), "GIF"),
    ]:
        buf = io.BytesIO()
        img.save(buf, fmt)
        made[name] = buf.getvalue()
    return made


def image_mutations(rng: random.Random, name: str, data: bytes):
    """Damaged variants of an image file: truncations, flipped bytes, forged dimensions (PNG with a valid
    checksum, BMP, GIF), random bytes behind the format's magic."""
    kind = rng.choice(["truncate", "flip", "dims", "random"])
    if kind == "truncate":
        return kind, data[: rng.randrange(len(data))]
    if kind == "flip":
        b = bytearray(data)
        for _ in range(rng.randint(1, 10)):
            b[rng.randrange(min(len(b), 64) if rng.random() < 0.6 else len(b))] = rng.randrange(256)
        return kind, bytes(b)
    if kind == "dims":
        w, h = rng.choice([(0, 5), (1, 2**31 - 1), (20_000, 20_000), (65_535, 65_535), (12_000, 12_000), (3, 3)])
        if name.endswith(".png"):  # IHDR at byte 16, its CRC recomputed so the forgery is read
            ihdr = struct.pack(">II", w, h) + data[24:29]
            return kind, data[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + data[33:]
        if name.endswith(".bmp"):
            return kind, data[:18] + struct.pack("<ii", w % 2**31, h % 2**31) + data[26:]
        if name.endswith(".gif"):
            return kind, data[:6] + struct.pack("<HH", w % 65536, h % 65536) + data[10:]
        return kind, data[:163] + struct.pack(">HH", h % 65536, w % 65536) + data[167:]  # near a JPEG SOF
    return kind, data[:4] + bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))


def test_fuzz_damaged_images_through_predict(checkpoint, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    files = image_files()
    rng = random.Random(11)
    outcomes: dict[str, int] = {}
    t0, i = time.perf_counter(), 0
    while time.perf_counter() - t0 < 10:
        name = rng.choice(sorted(files))
        kind, damaged = image_mutations(rng, name, files[name])
        path = tmp_path / f"case{i}-{name}"
        path.write_bytes(damaged)
        code = main(["predict", str(checkpoint), str(path), "--out", str(work / "out")])
        out, err = capsys.readouterr()
        key = f"{kind}:{check_outcome(code, out, err, (name, kind, i))}"
        outcomes[key] = outcomes.get(key, 0) + 1
        path.unlink()
        i += 1
    stray = [p for p in tmp_path.rglob("*") if p.is_file() and work / "out" not in p.parents]
    assert not stray, stray
    print(f"image fuzz: {i} cases, {dict(sorted(outcomes.items()))}")
    assert i >= 10 and any(k.endswith("refused") for k in outcomes) and any(k.endswith("ok") for k in outcomes)
