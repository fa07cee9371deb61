"""The reliability census: every case of the hardening list tried through the ``neuratlas`` command as a
subprocess (the federated ones through their tests), and a table of cases per category: how many were tried
and how many gave one clear line (or, for the cases where the right outcome is success, passed).

    PYTHONPATH=src python scripts/census.py            # all categories, about 5 minutes on 2 cores
    PYTHONPATH=src python scripts/census.py --only configs,inputs

Each case prints ``PASS``/``FAIL`` with what it saw; the script exits 1 when any case fails. Everything it
writes is in a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = ("checkpoints", "configs", "inputs", "signals", "disk", "federated")
CASES: list[tuple[str, str, Callable[[], tuple[bool, str]]]] = []
WORK = Path(tempfile.mkdtemp(prefix="neuratlas-census-"))
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "NEURATLAS_OFFLINE": "1", "NEURATLAS_CACHE": str(WORK / "cache")}
USER_CACHE = {k: v for k, v in ENV.items() if k != "NEURATLAS_CACHE"} | (
    {"NEURATLAS_CACHE": os.environ["NEURATLAS_CACHE"]} if "NEURATLAS_CACHE" in os.environ else {}
)  # data at hand
QUIET = ["--trainer.progress", "false", "--trainer.loggers", "csv", "--trainer.out_dir", str(WORK / "runs")]


def case(category: str, name: str):
    def add(fn):
        CASES.append((category, name, fn))
        return fn

    return add


def cli(*args: object, timeout: float = 300, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "neuratlas", *map(str, args)],
        capture_output=True,
        text=True,
        env=env or ENV,
        cwd=WORK,
        timeout=timeout,
        **kw,
    )


def start(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "neuratlas", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=WORK,
    )


def clean(text: str) -> bool:
    return "Traceback" not in text and "unexpected" not in text and "Warning:" not in text


def one_line(r: subprocess.CompletedProcess, *needles: str) -> tuple[bool, str]:
    """Exit 2, exactly one ``error:`` line on stderr holding every needle (a file name, an option)."""
    err = r.stderr.strip()
    ok = (
        r.returncode == 2
        and err.startswith("error: ")
        and len(err.splitlines()) == 1
        and clean(err)
        and all(n in err for n in needles)
    )
    return ok, f"rc {r.returncode}: {err[-300:] or r.stdout.strip()[-300:]}"


def succeeds(r: subprocess.CompletedProcess, *needles: str) -> tuple[bool, str]:
    text = r.stdout + r.stderr
    ok = r.returncode == 0 and clean(r.stderr) and all(n in text for n in needles)
    return ok, f"rc {r.returncode}: {(r.stderr.strip() or r.stdout.strip())[-300:]}"


_RUN: dict[str, Path] = {}


def digits_run() -> Path:
    """A trained mlp-digits run (6 steps, a checkpoint every 3): what predict/eval/resume cases start from."""
    if "run" not in _RUN:
        r = cli(
            "train",
            "mlp-digits",
            *QUIET,
            "--trainer.max_steps",
            6,
            "--trainer.save_every",
            3,
            "--trainer.run_name",
            "base",
        )
        assert r.returncode == 0, r.stderr
        _RUN["run"] = WORK / "runs" / "base"
    return _RUN["run"]


def digit_npy() -> Path:
    path = WORK / "digit.npy"
    np.save(path, np.zeros((8, 8), np.float32))
    return path


def with_metadata(src: Path, dst: Path, **changes: str) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    save_file(load_file(str(src)), str(dst), metadata={**meta, **changes})
    return dst


def copy_run(name: str) -> Path:
    import shutil

    dst = WORK / "runs" / name
    shutil.copytree(digits_run(), dst)
    return dst


# --- checkpoints -----------------------------------------------------------------------------------------
def wait_for(proc: subprocess.Popen, ready: Callable[[], bool], limit: float = 120) -> bool:
    t0 = time.time()
    while time.time() - t0 < limit and proc.poll() is None:
        if ready():
            return True
        time.sleep(0.02)
    return False


@case("checkpoints", "kill -9 while training (a checkpoint every 3 steps), then --resume")
def kill9() -> tuple[bool, str]:
    run = WORK / "runs" / "k9"
    p = start(
        "train",
        "mlp-digits",
        *QUIET,
        "--trainer.max_steps",
        60,
        "--trainer.save_every",
        3,
        "--trainer.log_every",
        1,
        "--trainer.eval_every",
        1000,
        "--trainer.run_name",
        "k9",
    )
    if not wait_for(p, lambda: len(list((run / "checkpoints").glob("step-*"))) >= 2):
        p.kill()
        return False, "no checkpoint appeared"
    p.send_signal(signal.SIGKILL)
    p.wait()
    r = cli("train", "--resume", run, *QUIET)
    _RUN["k9"] = run
    return succeeds(r, "60 steps")


@case("checkpoints", "metrics.csv kept across that resume (every step's row once, from both processes)")
def metrics_kept() -> tuple[bool, str]:
    import csv

    run = _RUN.get("k9")
    if run is None:
        return False, "the kill -9 case did not run"
    with open(run / "metrics.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row["split"] == "train" and row["name"] == "loss"]
    ok = steps == list(range(1, 61))
    return ok, f"{len(steps)} rows, steps {steps[:3]} … {steps[-3:]}"


@case("checkpoints", "run name reused without --resume")
def reuse() -> tuple[bool, str]:
    digits_run()
    return one_line(
        cli("train", "mlp-digits", *QUIET, "--trainer.max_steps", 2, "--trainer.run_name", "base"), "already exists"
    )


@case("checkpoints", "default run names of two runs started together")
def collisions() -> tuple[bool, str]:
    before = set((WORK / "runs").glob("mlp-tiny-*"))
    procs = [start("train", "mlp-digits", *QUIET, "--trainer.max_steps", 1) for _ in range(2)]
    codes = [p.wait(timeout=300) for p in procs]
    made = set((WORK / "runs").glob("mlp-tiny-*")) - before
    return codes == [0, 0] and len(made) == 2, f"exit {codes}, {len(made)} new folders"


@case("checkpoints", "--resume with --optimizer.lr 1e-5 and --trainer.max_steps 9 (take effect)")
def resume_overrides() -> tuple[bool, str]:
    run = copy_run("over")
    r = cli("train", "--resume", run, *QUIET, "--optimizer.lr", "1e-5", "--trainer.max_steps", 9)
    ok, detail = succeeds(r, "9 steps")
    from neuratlas.models.checkpoint import resumable

    _, state = resumable(run)
    lrs = [g.get("initial_lr", g["lr"]) for o in state["optimizers"] for g in o["param_groups"]]
    ok = ok and state["step"] == 9 and bool(lrs) and all(abs(lr - 1e-5) < 1e-12 for lr in lrs)
    return ok, f"{detail.splitlines()[-1]}; step {state['step']}, base lr {lrs}"


def damaged(name: str, **meta: str) -> Path:
    return with_metadata(digits_run() / "checkpoints" / "last.safetensors", WORK / f"{name}.safetensors", **meta)


for label, value in (("a list", "[1, 2]"), ("null", "null"), ("nested 10,000 deep", "[" * 10_000 + "]" * 10_000)):

    def metadata_case(value=value) -> tuple[bool, str]:
        path = damaged("meta", model_config=value)
        return one_line(cli("eval", path), str(path), "damaged Neuratlas metadata")

    case("checkpoints", f"checkpoint metadata config as {label} (eval)")(metadata_case)


@case("checkpoints", "a checkpoint under 2 KB declaring hidden=[32000, 32000] (predict)")
def declares_larger() -> tuple[bool, str]:
    from neuratlas.models import create_model
    from neuratlas.models.checkpoint import save_weights

    model = create_model("mlp", in_features=4, hidden=[8], num_classes=2)
    path = save_weights(WORK / "small.safetensors", model, {}, {"task": "classification"}, 0)
    path = with_metadata(
        path,
        WORK / "bomb.safetensors",
        model_config=json.dumps({"in_features": 4, "hidden": [32000, 32000], "num_classes": 2}),
    )
    ok, detail = one_line(cli("predict", path, digit_npy()), str(path), "refused before allocating")
    return ok and path.stat().st_size < 2500, f"{path.stat().st_size} bytes; {detail}"


@case("checkpoints", "ResNet of depth 6e8 declared by a checkpoint (predict)")
def deep_resnet() -> tuple[bool, str]:
    from neuratlas.models import create_model
    from neuratlas.models.checkpoint import read_checkpoint, save_weights

    path = save_weights(
        WORK / "r.safetensors", create_model("resnet18", num_classes=10, width=8), {}, {"task": "classification"}, 0
    )
    cfg = read_checkpoint(path).model_config
    t0 = time.time()
    results = []
    for style, depth in (("imagenet", 600_000_000), ("cifar", 600_000_002)):  # refused by its config, by size
        bomb = with_metadata(
            path, WORK / f"deep-{style}.safetensors", model_config=json.dumps({**cfg, "depth": depth, "style": style})
        )
        results.append(one_line(cli("predict", bomb, digit_npy()), str(bomb)))
    return all(ok for ok, _ in results), f"{time.time() - t0:.0f} s; " + "; ".join(d for _, d in results)


@case("checkpoints", "trainer state holding a compressed 2 GiB tensor (resume)")
def state_bomb() -> tuple[bool, str]:
    run = copy_run("statebomb")
    for folder in (run / "checkpoints").glob("step-*"):
        with zipfile.ZipFile(folder / "state.pt", "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            with z.open("archive/data/0", "w", force_zip64=True) as f:
                block = b"\0" * (64 << 20)
                for _ in range(32):  # 2 GiB of zeros, about 2 MB compressed
                    f.write(block)
    size = sum(p.stat().st_size for p in (run / "checkpoints").glob("step-*/state.pt"))
    ok, detail = one_line(cli("train", "--resume", run, *QUIET), "compressed entries")
    return ok, f"{size / 2**20:.1f} MiB on disk; {detail}"


def nan_checkpoint() -> Path:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = digits_run() / "checkpoints" / "last.safetensors"
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    path = WORK / "nan.safetensors"
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(str(src)).items()}, str(path), metadata=meta)
    return path


@case("checkpoints", "all-NaN checkpoint (predict)")
def nan_predict() -> tuple[bool, str]:
    path = nan_checkpoint()
    return one_line(cli("predict", path, digit_npy(), "--out", WORK / "out"), str(path), "NaN or infinite")


@case("checkpoints", "all-NaN checkpoint (eval)")
def nan_eval() -> tuple[bool, str]:
    path = nan_checkpoint()
    return one_line(cli("eval", path), str(path), "NaN or infinite")


@case("checkpoints", "BERT checkpoint whose `pretrained` names another folder (eval reads nothing from it)")
def bert_redirect() -> tuple[bool, str]:
    r = cli(
        "train",
        "bert-shakespeare-mlm",
        *QUIET,
        "--model.dim",
        32,
        "--model.n_layer",
        1,
        "--model.n_head",
        2,
        "--model.ffn_dim",
        64,
        "--model.max_seq_len",
        32,
        "--data.block_size",
        32,
        "--task.eval_tokens",
        512,
        "--trainer.max_steps",
        1,
        "--trainer.run_name",
        "bert",
        env=USER_CACHE,
    )
    if r.returncode != 0:
        return False, f"training the BERT failed: {r.stderr[-300:]}"
    from neuratlas.models.checkpoint import read_checkpoint

    src = WORK / "runs" / "bert" / "checkpoints" / "last.safetensors"
    cfg = read_checkpoint(src).model_config
    elsewhere = WORK / "elsewhere-hf-bert"  # does not exist: reading it would fail loudly
    path = with_metadata(
        src, WORK / "bert-redirect.safetensors", model_config=json.dumps({**cfg, "pretrained": str(elsewhere)})
    )
    ok, detail = succeeds(cli("eval", path, env=USER_CACHE), "loss")
    r2 = cli(
        "eval",
        with_metadata(
            src, WORK / "bert-minilm.safetensors", model_config=json.dumps({**cfg, "pretrained": "all-MiniLM-L6-v2"})
        ),
        env=USER_CACHE,
    )
    ok2, detail2 = succeeds(r2, "loss")
    return ok and ok2 and "elsewhere" not in r.stdout, f"{detail}; named weights: {detail2}"


# --- configs ---------------------------------------------------------------------------------------------
CONFIGS = [
    ("trainer.max_steps", "0"),
    ("trainer.max_steps", "-1"),
    ("trainer.epochs", "0"),
    ("data.batch_size", "0"),
    ("trainer.grad_accum", "0"),
    ("optimizer.lr", "-1"),
    ("optimizer.lr", "nan"),
    ("trainer.device", "cuda"),
    ("trainer.num_threads", "0"),
    ("model.hidden", "[1000000000]"),
    ("trainer.run_name", "x" * 300),
    ("trainer.run_name", "../escaped"),  # escape attempt
]
for key, value in CONFIGS:

    def config_case(key=key, value=value) -> tuple[bool, str]:
        if key == "trainer.device" and value == "cuda":
            import torch

            if torch.cuda.is_available():
                return True, "skipped: this machine has a GPU"
        steps = [] if key == "trainer.max_steps" else ["--trainer.max_steps", "2"]
        r = cli("train", "mlp-digits", *QUIET, *steps, f"--{key}", value)
        needle = key.split(".")[1] if key != "trainer.device" else "CUDA"
        if key == "model.hidden":
            needle = "too large"
        if key == "trainer.run_name":
            needle = "run_name"
        return one_line(r, needle)

    case("configs", f"--{key} {value if len(value) < 20 else value[:8] + '…'}")(config_case)


# --- inputs ----------------------------------------------------------------------------------------------
def png_header(path: Path, width: int, height: int) -> Path:
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    )
    return path


@case("inputs", "400-MP PNG given to predict")
def big_image_predict() -> tuple[bool, str]:
    path = png_header(WORK / "huge.png", 20_000, 20_000)
    return one_line(cli("predict", digits_run(), path, "--out", WORK / "out"), str(path), "refused before decoding")


@case("inputs", "400-MP PNG in an image folder (data inspect --data.on_bad error)")
def big_image_folder() -> tuple[bool, str]:
    from PIL import Image

    root = WORK / "folder"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(root / c / f"{i}.png")
    path = png_header(root / "a" / "huge.png", 20_000, 20_000)
    listed = cli("data", "inspect", "--data.name", "image-folder", "--data.root", root, "--sheet", "")
    ok1 = listed.returncode == 0 and clean(listed.stderr) and f"{path}: its header declares" in listed.stdout
    ok2, detail = one_line(
        cli(
            "data",
            "inspect",
            "--data.name",
            "image-folder",
            "--data.root",
            root,
            "--sheet",
            "",
            "--data.on_bad",
            "error",
        ),
        str(path),
        "refused before decoding",
    )
    return ok1 and ok2, f"listed as unusable: {ok1}; {detail}"


@case("inputs", "object-dtype .npy given to predict")
def object_npy() -> tuple[bool, str]:
    path = WORK / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return one_line(cli("predict", digits_run(), path, "--out", WORK / "out"), str(path), "Python objects")


@case("inputs", "1 KB Planetoid pickle of shared nested lists (train gcn-cora --data.root)")
def planetoid_bomb() -> tuple[bool, str]:
    import gzip

    folder = WORK / "cora"
    folder.mkdir(exist_ok=True)
    for f in (REPO / "src/neuratlas/data/bundled/planetoid-cora").glob("ind.cora.*.gz"):
        (folder / f.stem).write_bytes(gzip.decompress(f.read_bytes()))
    bomb = bytearray(b"\x80\x02]q\x00(" + b"N" * 40 + b"e")
    for i in range(1, 12):  # 12 levels of 40 references to the level below: 40**12 elements
        bomb += b"]q" + bytes([i]) + b"(" + (b"h" + bytes([i - 1])) * 40 + b"e"
    path = folder / "ind.cora.graph"
    path.write_bytes(bytes(bomb + b"."))
    ok, detail = one_line(
        cli("train", "gcn-cora", *QUIET, "--data.root", folder, "--trainer.max_steps", 1),
        str(path),
        "not a genuine Planetoid file",
    )
    return ok and path.stat().st_size < 1100, f"{path.stat().st_size} bytes; {detail}"


@case("inputs", "corrupt file in the cache (a truncated Cora file): named, removed, the bundled copy used")
def corrupt_cache() -> tuple[bool, str]:
    first = cli("data", "inspect", "--data.name", "cora", "--sheet", "")
    cached = WORK / "cache" / "planetoid-cora" / "ind.cora.graph"
    if first.returncode != 0 or not cached.is_file():
        return False, f"first read: rc {first.returncode} {first.stderr[-200:]}"
    cached.write_bytes(cached.read_bytes()[:1000])
    r = cli("data", "inspect", "--data.name", "cora", "--sheet", "")
    ok, detail = succeeds(r, str(cached), "checksum")
    return ok and cached.is_file() and len(cached.read_bytes()) > 1000, detail


# --- signals ---------------------------------------------------------------------------------------------
for sig in (signal.SIGTERM,):

    def signal_case(sig=sig) -> tuple[bool, str]:
        name = f"sig{sig.value}"
        run = WORK / "runs" / name
        p = start(
            "train",
            "mlp-digits",
            *QUIET,
            "--trainer.max_steps",
            100_000,
            "--trainer.save_every",
            10_000,
            "--trainer.eval_every",
            100_000,
            "--trainer.run_name",
            name,
        )
        if not wait_for(p, lambda: (run / "metrics.csv").is_file() and (run / "metrics.csv").stat().st_size > 200):
            p.kill()
            return False, "the run did not start"
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
        saved = list((run / "checkpoints").glob("step-*"))
        ok = "--resume" in out + err and bool(saved) and clean(err)
        return ok, f"rc {p.returncode}, {len(saved)} step folder(s); {(err.strip() or out.strip())[-200:]}"

    case("signals", f"{sig.name} during training saves and prints the resume command")(signal_case)


# --- disk ------------------------------------------------------------------------------------------------
@case("disk", "full disk (a file-size limit) during the checkpoint save")
def full_disk() -> tuple[bool, str]:
    run = copy_run("full")
    weights = (run / "checkpoints" / "last.safetensors").stat().st_size
    state = max(p.stat().st_size for p in (run / "checkpoints").glob("step-*/state.pt"))
    limit = (weights + state) // 2

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = cli("train", "--resume", run, *QUIET, "--trainer.max_steps", 9, preexec_fn=small_files)
    ok, detail = one_line(r, "could not write", "previous file there is unchanged")
    intact = [p.name for p in (run / "checkpoints").glob("step-*")]
    return ok and "step-000000006" in intact, f"{detail}; kept {sorted(intact)}"


# --- federated: the tests that exist, run and counted ---------------------------------------------------------
POISONED = "test_a_poisoned_client_is_rejected_by_name_and_the_model_stays_healthy"
SURVIVES = "test_message_api_round_survives_a_killed_a_silent_and_a_poisoned_client"
FEDERATED = {
    "NaN client (screened, named)": f"{POISONED}[nan-mean]",
    "×1e4 client (screened, named)": f"{POISONED}[scale-mean]",
    "wrong-shaped update (screened, named)": f"{POISONED}[shape-mean]",
    "client that never answers (round timeout)": SURVIVES,
    "client dropped mid-run (killed in round 2)": SURVIVES,
}
_FED: dict[str, str] = {}


def federated_results() -> dict[str, str]:
    if not _FED:
        ids = sorted({f"tests/test_federated.py::{t}" for t in FEDERATED.values()})
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *ids],
            capture_output=True,
            text=True,
            env=ENV,
            cwd=REPO,
            timeout=900,
        )
        for line in r.stdout.splitlines():
            m = re.match(r"(PASSED|FAILED|ERROR|SKIPPED) tests/test_federated.py::(\S+)", line)
            if m:
                _FED[m.group(2)] = m.group(1)
        _FED.setdefault("", r.stdout[-300:])
    return _FED


for label, test in FEDERATED.items():

    def federated_case(test=test) -> tuple[bool, str]:
        status = federated_results().get(test, "not run")
        return status == "PASSED", f"{test}: {status}"

    case("federated", label)(federated_case)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(CATEGORIES), help="categories to run, comma-separated")
    args = ap.parse_args()
    wanted = args.only.split(",")
    table: dict[str, list[int]] = {}
    failed = []
    for category, name, fn in CASES:
        if category not in wanted:
            continue
        t0 = time.time()
        try:
            ok, detail = fn()
        except Exception as e:  # noqa: BLE001 (a census case that cannot run is a failure, reported)
            ok, detail = False, f"{type(e).__name__}: {e}"
        row = table.setdefault(category, [0, 0])
        row[0] += 1
        row[1] += ok
        print(f"{'PASS' if ok else 'FAIL'} [{category}] {name} ({time.time() - t0:.0f} s): {detail}", flush=True)
        if not ok:
            failed.append(name)
    print("\n| category | tried | one clear line / passing |\n|---|---|---|")
    for category in CATEGORIES:
        if category in table:
            print(f"| {category} | {table[category][0]} | {table[category][1]} |")
    total = [sum(r[i] for r in table.values()) for i in (0, 1)]
    print(f"| all | {total[0]} | {total[1]} |")
    import shutil

    shutil.rmtree(WORK, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
