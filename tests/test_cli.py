"""The one option dialect: every subcommand is read by cli/options.py from typed dataclasses.

Subcommands are discovered from the parser, so a new one is covered by these tests without editing them."""

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch

from neuratlas import __version__
from neuratlas.cli import build_parser, main
from neuratlas.cli.options import subcommands
from neuratlas.errors import NeuratlasError

COMMANDS = sorted(subcommands(build_parser()))
QUIET = ["--trainer.progress", "false", "--trainer.loggers", "csv"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_subcommand_refuses_an_unknown_option(name, capsys):
    """One line naming the option and listing the valid ones: the command's own (read from its dataclass)
    and the common ones."""
    cmd = subcommands(build_parser())[name].get_default("_command")
    assert cmd is not None, f"{name} is not read by cli/options.py"  # no second dialect
    assert main([name, "--no-such-option", "1"]) == 2
    line = _error_line(capsys)
    assert "no_such_option" in line.replace("-", "_") and "Valid options: " in line
    valid = line.split("Valid options: ")[1]
    assert "--config" in valid and "--print-config" in valid
    own = [f.name for f in dataclasses.fields(cmd.options) if not f.metadata.get("positional")]
    assert all(f"--{k}" in valid for k in own), (own, valid)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_subcommand_has_help(name, capsys):
    assert main([name, "--help"]) == 0 and "usage:" in capsys.readouterr().out


# What each command needs before --print-config (its required positionals; RUN: a trained checkpoint).
PRINT_ARGS = {
    "train": ["mlp-digits"],
    "finetune": ["mlp-digits"],
    "ddp": ["mlp-digits"],
    "federated": ["sim"],
    "eval": ["RUN"],
    "predict": ["RUN"],
    "forecast": ["RUN"],
    "sample": ["RUN"],
    "visualize": ["RUN"],
    "export": ["RUN", "--format", "pt2"],
    "bench": ["mfu"],
    "generate": ["smollm2-135m-instruct", "--prompt", "a, b", "--prompt", "c", "--device", "cpu"],
    "chat": ["smollm2-135m-instruct", "--max-new-tokens", "7", "--quantize", "int8"],
    "data": ["fetch", "cora", "tinyshakespeare"],
}


@pytest.mark.parametrize("name", COMMANDS)
def test_every_subcommand_prints_its_config_and_reads_it_back(name, digits_run, tmp_path, capsys):
    """--print-config prints the resolved options (nothing runs); --config reads them back to the same."""
    args = [str(digits_run) if a == "RUN" else a for a in PRINT_ARGS.get(name, [])]
    assert main([name, *args, "--print-config", "json"]) == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    assert printed and isinstance(printed, dict)
    (tmp_path / "c.json").write_text(json.dumps(printed))
    assert main([name, "--config", str(tmp_path / "c.json"), "--print-config", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == printed


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--timeout", "0"], "--timeout must be > 0"),
        (["--cpus", "0"], "--cpus must be ≥ 1"),
        (["--clients", "0"], "--clients must be ≥ 1"),
        (["--min_clients", "0"], "--min_clients must be ≥ 1"),
        (["--drop_at_round", "-1"], "--drop_at_round must be ≥ 0"),
    ],
)
def test_federated_numbers_are_range_checked(flags, words, capsys):
    assert main(["federated", "flower-sim", *flags]) == 2
    assert words in _error_line(capsys)


def test_generate_chat_data_export_options_are_typed(capsys):
    """The commands that had flags of their own read the same typed options (old hyphenated spellings are
    the same keys); choices are checked and listed."""
    assert (
        main(
            [
                "generate",
                "m",
                "--max-new-tokens",
                "5",
                "--top-p",
                "0.9",
                "--stop",
                "a, b",
                "--stop",
                "c",
                "--bf16",
                "--print-config",
                "json",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["max_new_tokens"] == 5 and printed["top_p"] == 0.9 and printed["bf16"] is True
    assert printed["stop"] == ["a, b", "c"] and printed["device"] == "auto" and printed["prompt"] == []
    assert main(["generate", "m", "--quantize", "int3"]) == 2
    assert "--quantize" in _error_line(capsys)
    assert main(["generate", "m", "--quantize", "int8", "--bf16"]) == 2
    assert "exclude each other" in _error_line(capsys)
    assert main(["generate", "m", "--max_new_tokens", "0"]) == 2
    assert "≥ 1" in _error_line(capsys)
    assert main(["chat", "m", "--max-new-token", "3"]) == 2
    assert "Did you mean --max_new_tokens" in _error_line(capsys)
    assert main(["generate", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--quantize {bf16,int8,int4}|none" in out and "--device STR" in out and "cuda, then mps, then cpu" in out
    assert main(["export", "x", "--format", "tflite"]) == 2
    assert "not one of onnx, pt2, hf" in _error_line(capsys)
    assert main(["data", "fetch"]) == 2
    assert "needs NAME|all" in _error_line(capsys)
    assert main(["data", "lsit"]) == 2
    assert "not one of list, fetch, inspect" in _error_line(capsys)


INFERENCE = ["predict", "forecast", "sample", "generate", "chat", "visualize", "eval"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a build without CUDA")
@pytest.mark.parametrize("name", [*INFERENCE, "export"])  # export: where its check runs the files
def test_device_cuda_without_cuda_is_one_line(name, digits_run, capsys):
    """Checked before the model is loaded (export: before anything is written): the option as given, and
    what to use instead."""
    assert main([name, str(digits_run), "--device", "cuda"]) == 2
    line = _error_line(capsys)
    assert "--device cuda: this PyTorch build sees no CUDA GPU; use cpu or auto" in line
    assert main([name, str(digits_run), "--device", "tpu9"]) == 2
    assert "--device: 'tpu9' is not a device" in _error_line(capsys)
    assert not (digits_run / "export").exists()


def test_device_auto_is_cuda_then_mps_then_cpu(monkeypatch):
    import neuratlas.device as device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "mps_available", lambda: False)
    assert device.resolve_device("auto", option="--device") == torch.device("cpu")
    monkeypatch.setattr(device, "mps_available", lambda: True)
    assert device.resolve_device("auto", option="--device") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device.resolve_device("auto", option="--device") == torch.device("cuda", 0)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"neuratlas {__version__}"


def test_help_lists_literal_choices(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--optimizer.name {sgd,adam,adamw,rmsprop,muon}" in out
    assert "--trainer.precision {auto,fp32,bf16,fp16}" in out
    assert "muon: Muon on hidden matrices" in out  # the field's comment is its help
    assert "Aliases: finetune." in out
    assert main(["eval", "--help"]) == 0
    assert "--split {val,test,train},..." in capsys.readouterr().out
    assert main(["bench", "mfu", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--precision {auto,fp32,bf16}" in out and "options of gnn" not in out  # NAME given: its options only


def test_aliases_say_so_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for alias, of in (("finetune", "train"), ("forecast", "predict")):
        assert any(line.split()[:1] == [alias] and f"an alias of {of}" in line for line in out.splitlines()), alias


def test_bad_values_are_one_line(capsys):
    assert main(["train", "mlp-digits", "--optimizer.name", "adagrad"]) == 2
    assert "not one of sgd, adam" in _error_line(capsys)
    assert main(["train", "mlp-digits", "--trainer.max_step", "3"]) == 2
    assert "Did you mean --trainer.max_steps" in _error_line(capsys)
    assert main(["train", "mlp-digits", "--optimiser.lr", "3"]) == 2
    assert "--optimizer.*" in _error_line(capsys)
    assert main(["list", "--kind", "everything"]) == 2
    assert "not one of models, recipes" in _error_line(capsys)
    assert main(["eval"]) == 2
    assert "missing CHECKPOINT" in _error_line(capsys)


def test_print_config_and_config_round_trip(tmp_path, capsys):
    argv = ["train", "mlp-digits", "--optimizer.lr", "0.02", "--trainer.max-steps", "7", "--model.hidden", "[48]"]
    assert main([*argv, "--print-config", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["recipe"] == "mlp-digits" and printed["optimizer"]["lr"] == 0.02
    assert printed["trainer"]["max_steps"] == 7 and printed["model"]["hidden"] == [48]
    (tmp_path / "run.json").write_text(json.dumps(printed))
    assert main(["train", "--config", str(tmp_path / "run.json"), "--print-config", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == printed
    # the command line wins over the file
    assert (
        main(["train", "--config", str(tmp_path / "run.json"), "--optimizer.lr", "0.5", "--print-config", "json"]) == 0
    )
    assert json.loads(capsys.readouterr().out) == {**printed, "optimizer": {**printed["optimizer"], "lr": 0.5}}
    # YAML, through PyYAML
    pytest.importorskip("yaml")
    assert main([*argv, "--print-config", "yaml"]) == 0
    (tmp_path / "run.yaml").write_text(capsys.readouterr().out)
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--print-config", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == printed
    # an unknown key in the file is refused, naming the file
    (tmp_path / "bad.yaml").write_text("recipe: mlp-digits\ntrainer:\n  max_stpes: 3\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    line = _error_line(capsys)
    assert "bad.yaml" in line and "Did you mean --trainer.max_steps" in line


def test_flat_options_of_any_command_round_trip(tmp_path, capsys):
    """Hyphens and underscores are one key; a repeatable option keeps commas; lists and nested sections."""
    argv = ["tour", "--families", "mlp,gan", "--out", "x", "--trainer.max-steps", "5"]
    assert main([*argv, "--print-config", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["families"] == ["mlp", "gan"] and printed["trainer"]["max_steps"] == 5
    (tmp_path / "tour.json").write_text(json.dumps(printed))
    assert main(["tour", "--config", str(tmp_path / "tour.json"), "--print-config", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == printed
    assert main(["bench", "speed", "--only", "mfu", "--mfu.batch", "2", "--print-config", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["only"] == ["mfu"] and printed["mfu"] == {"batch": 2}
    (tmp_path / "speed.json").write_text(json.dumps(printed))
    assert main(["bench", "--config", str(tmp_path / "speed.json"), "--print-config", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == printed


def test_yaml_without_pyyaml_names_the_extra(tmp_path, monkeypatch, capsys):
    (tmp_path / "c.yaml").write_text("kind: tasks\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if PyYAML were not installed
    assert main(["list", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "neuratlas[yaml]" in _error_line(capsys)
    assert main(["list", "--print-config"]) == 0  # falls back to JSON
    assert json.loads(capsys.readouterr().out) == {"pattern": "*", "kind": "all"}


def test_registry_aliases_keep_old_names():
    from neuratlas.tasks import TASKS

    for old in ("language_modeling", "masked_lm", "text_classification"):
        new = old.replace("_", "-")
        assert old in TASKS and TASKS.get(old) is TASKS.get(new) and old not in TASKS.names()
    assert all("_" not in n for n in TASKS.names())


def test_benchmark_options_are_typed():
    from neuratlas.bench import BENCHMARKS, run_benchmark

    assert all(entry.config_class is not None for entry in BENCHMARKS)
    with pytest.raises(NeuratlasError, match="Did you mean batch"):
        run_benchmark("mfu", bach=2)
    with pytest.raises(NeuratlasError, match="not one of auto, fp32, bf16"):
        run_benchmark("mfu", precision="fp16")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert (
        main(
            [
                "train",
                "mlp-digits",
                "--trainer.max_steps",
                "2",
                "--trainer.out_dir",
                str(out),
                "--trainer.run_name",
                "digits",
                *QUIET,
            ]
        )
        == 0
    )
    return out / "digits"


def test_eval_and_predict_take_typed_options(digits_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["eval", str(digits_run), "--split", "test", "--trainer.precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "  test  " in out and "  val  " not in out
    assert main(["eval", str(digits_run), "--model.hidden", "8"]) == 2
    assert "--trainer.*" in _error_line(capsys)
    image = tmp_path / "digit.npy"
    np.save(image, np.zeros((1, 8, 8), dtype=np.uint8))
    assert main(["predict", str(digits_run), str(image), "--invert", "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: ")
    assert main(["eval", str(digits_run), "--split", "val", "--device", "cpu"]) == 0
    assert "  val  " in capsys.readouterr().out
    assert main(["eval", str(digits_run), "--device", "cpu", "--trainer.device", "cuda"]) == 2
    assert "disagree" in _error_line(capsys)
    assert main(["predict", str(digits_run), str(image), "--invrt"]) == 2
    line = _error_line(capsys)
    assert "Did you mean --invert" in line and "--max_new_tokens" not in line  # this task's options only
    assert main(["predict", str(digits_run)]) == 2
    assert "give INPUTS" in _error_line(capsys)


def test_a_checkpoint_saved_under_an_old_task_name_loads(tmp_path, capsys):
    """Runs saved before names took hyphens store ``language_modeling``: predict finds the task by its alias."""
    from neuratlas.models.checkpoint import read_checkpoint

    assert (
        main(
            [
                "train",
                "gpt-tinyshakespeare-baby",
                "--task.name",
                "language_modeling",
                "--task.eval_tokens",
                "256",
                "--trainer.max_steps",
                "1",
                "--trainer.eval_every",
                "1",
                "--trainer.out_dir",
                str(tmp_path),
                "--trainer.run_name",
                "old",
                *QUIET,
            ]
        )
        == 0
    )
    assert read_checkpoint(tmp_path / "old").extra["task"] == "language_modeling"
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "old"), "To be", "--max-new-tokens", "4", "--temperature", "0"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("To be") and len(line) == len("To be") + 4
    assert main(["predict", str(tmp_path / "old"), "To be", "--beam", "2"]) == 2
    assert "--max_new_tokens" in _error_line(capsys)


def test_enumerated_config_options_are_literals(capsys):
    """A Literal lists the choices in --help and refuses a typo when parsed, before anything is built."""
    import typing

    from neuratlas.layers.activations import ACTIVATIONS, Activation

    assert set(typing.get_args(Activation)) == set(ACTIVATIONS)
    assert main(["train", "mlp-digits", "--model.act", "gelu", "--print-config", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["act"] == "gelu"
    assert main(["train", "mlp-digits", "--model.act", "geLU", "--print-config", "json"]) == 2
    assert "not one of relu, relu6" in _error_line(capsys)


def test_ddp_passes_checked_sections_to_each_train_process(monkeypatch, capsys):
    import neuratlas.training.distributed as distributed

    calls = []
    monkeypatch.setattr(distributed, "launch", lambda nproc, argv: calls.append((nproc, argv)) or 0)
    assert main(["ddp", "mlp-digits", "--nproc", "3", "--trainer.max-steps", "4", "--model.hidden", "[48]"]) == 0
    assert calls == [(3, ["train", "mlp-digits", "--trainer.max_steps", "4", "--model.hidden", "[48]"])]
    assert main(["ddp", "mlp-digits", "--trainer.max_stepz", "4"]) == 2  # refused before any process starts
    assert "Did you mean --trainer.max_steps" in _error_line(capsys) and len(calls) == 1
