"""Fuzzing the boundaries with a seeded generator (reproducible; each part bounded in time): random overrides of
random recipes' configs up to the trainer's construction (no training), and damaged copies of a real checkpoint
through ``neuratlas eval`` / ``predict``. Every outcome is a success or one ``error:`` line: never a traceback,
never "unexpected", never a file written outside the output folder."""

import json
import random
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from neuratlas.cli import main
from neuratlas.errors import NeuratlasError
from neuratlas.recipes import RECIPES, get_recipe
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
    while time.perf_counter() - t0 < 30:
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
    while time.perf_counter() - t0 < 30:
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
