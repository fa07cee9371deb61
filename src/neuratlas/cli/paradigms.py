"""ddp, federated: training paradigms that are more than one process (``finetune`` is an alias of train).

neuratlas finetune lite0-fashion-finetune --transfer.freeze 'stem.*' --trainer.max_steps 100
neuratlas federated sim --federated.alpha 0.5 --federated.rounds 10   # = neuratlas train fedavg-fashion-quick ...
neuratlas federated deploy --clients 3 --federated.rounds 2  # Flower SuperLink + SuperNodes on loopback
neuratlas federated flower-sim --federated.rounds 2  # Flower's simulation engine: virtual SuperNodes on Ray
neuratlas federated launch --clients 3 --federated.rounds 2  # Flower gRPC server + clients on loopback
neuratlas federated server --address 127.0.0.1:8080 --min-clients 2
neuratlas federated client --address 127.0.0.1:8080 --id 0
neuratlas ddp --nproc 2 mlp-fashion-quick          # = torchrun --nproc-per-node 2 -m neuratlas train
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from neuratlas.cli.options import Parsed, command, positional
from neuratlas.errors import NeuratlasError


@dataclass
class DdpOptions:
    """Launch `neuratlas train RECIPE [--SECTION.KEY VALUE ...]` in NPROC processes on this machine with
    DistributedDataParallel (gloo on CPU, NCCL on GPU): the same as `torchrun --nproc-per-node NPROC -m neuratlas
    train RECIPE ...`. --data.batch_size stays the global batch; each process takes 1/NPROC of it."""

    recipe: str = positional("a registered recipe (`neuratlas list --kind recipes`)")
    nproc: int = 2  # processes, one per device (≥ 1)


@dataclass
class FederatedOptions:
    """Federated learning on a recipe's run config (model, data, optimizer, and its --federated.KEY section),
    the same for every process: `sim` simulates every client in this process (= `neuratlas train RECIPE`);
    `deploy` runs it on Flower's deployment engine (a SuperLink and --clients SuperNodes on loopback);
    `flower-sim` on Flower's simulation engine (`flwr run` with --clients virtual SuperNodes, their ClientApps
    in Ray workers, --cpus at a time); `server` and `client` are Flower gRPC processes; `launch` starts a
    server and --clients clients on loopback."""

    mode: Literal["sim", "deploy", "flower-sim", "server", "client", "launch"] = positional("what this process is")
    recipe: str = "fedavg-fashion-quick"  # a federated recipe (`neuratlas list --kind recipes '*fed*'`)
    address: str = "127.0.0.1:8080"  # host:port of the Flower server (deploy, flower-sim: of the SuperLink)
    min_clients: int = 2  # server: clients needed before a round starts
    # launch, deploy: client processes to start (default 2); flower-sim: virtual SuperNodes (default: the
    # run's federated.clients, one per shard of its split)
    clients: int | None = None
    cpus: int = 1  # flower-sim: CPUs Ray may use, one per ClientApp training at a time
    timeout: float = 600.0  # deploy, flower-sim: seconds before every Flower process is stopped
    id: int = 0  # client: which shard of the split this client holds
    # client (for testing the server's checks): send a poisoned update instead of the trained weights
    attack: Literal["", "nan", "scale", "shape"] = ""
    drop_at_round: int = 0  # client: die during this round (for testing; 0: never)
    hang_at_round: int = 0  # client: stop answering from this round (for testing; 0: never)
    out: str = "runs/federated"  # folder for history.json and the accuracy plot

    def __post_init__(self) -> None:
        for name in ("min_clients", "cpus") + (("clients",) if self.clients is not None else ()):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("id", "drop_at_round", "hang_at_round"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be ≥ 0, got {getattr(self, name)}")
        if not self.timeout > 0:
            raise ValueError(f"--timeout must be > 0 seconds, got {self.timeout:g}")


def register(sub: argparse._SubParsersAction) -> None:
    from neuratlas.cli.core import _base_run, run_sections

    command(
        sub,
        "ddp",
        DdpOptions,
        cmd_ddp,
        help="data-parallel training: torchrun N processes of `neuratlas train`",
        sections=lambda o: run_sections(_base_run(o.recipe, None) if o else None),
    )
    command(
        sub,
        "federated",
        FederatedOptions,
        cmd_federated,
        help="federated learning: simulation, or Flower server/clients",
        sections=_fed_sections,
    )


def _fed_sections(opts: FederatedOptions | None) -> dict[str, type | None]:
    from neuratlas.cli.core import _base_run, run_sections

    return run_sections(_base_run(opts.recipe if opts else FederatedOptions.recipe, None))


def as_args(sections: dict[str, dict[str, Any]]) -> list[str]:
    """Section values back to ``--section.key value`` arguments, for a child process."""
    return [
        a
        for s, values in sections.items()
        for k, v in values.items()
        for a in (f"--{s}.{k}", v if isinstance(v, str) else json.dumps(v))
    ]


def cmd_ddp(opts: DdpOptions, parsed: Parsed) -> int:
    from neuratlas.training.distributed import launch

    if opts.nproc < 1:
        raise NeuratlasError(f"--nproc must be ≥ 1, got {opts.nproc}")
    return launch(opts.nproc, ["train", opts.recipe, *as_args(parsed.sections)])


def cmd_federated(opts: FederatedOptions, parsed: Parsed) -> int:
    from neuratlas.recipes import get_recipe

    run = get_recipe(opts.recipe).run_config(parsed.overrides)
    if "federated" not in run.sections:
        raise NeuratlasError(
            f"recipe {opts.recipe!r} has no federated section; federated recipes: "
            "fedavg-fashion-quick, fedavg-fashion-iid, fedprox-fashion-noniid"
        )
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logging.getLogger("neuratlas").addHandler(handler)
    if opts.mode in ("server", "client"):
        import torch

        torch.set_num_threads(1)  # several processes share the machine: no thread oversubscription
    out = Path(opts.out)
    port = int(opts.address.rsplit(":", 1)[1])
    if opts.mode == "sim":
        from neuratlas.paradigms import fit

        for line in fit(run).notes:
            print(line)
    elif opts.mode == "deploy":
        from neuratlas.paradigms.federated.messages import deploy_local

        code, text = deploy_local(run, _given(opts.clients, 2), out, port, opts.timeout)
        print("\n".join(ln for ln in text.splitlines() if ln.startswith("round ")))
        return _engine_exit(code, out, opts.timeout)
    elif opts.mode == "flower-sim":
        from neuratlas.paradigms.federated.core import FederatedConfig
        from neuratlas.paradigms.federated.messages import simulate_flower

        clients = _given(opts.clients, run.section("federated", FederatedConfig).clients)
        code, text = simulate_flower(run, clients, out, port, opts.timeout, opts.cpus)
        print("\n".join(ln for ln in text.splitlines() if ln.startswith("round ")))
        return _engine_exit(code, out, opts.timeout)
    elif opts.mode == "server":
        from neuratlas.paradigms.federated.flower import run_server

        hist = run_server(run, opts.address, opts.min_clients, out)
        print("round accuracy: " + ", ".join(f"{r}:{a:.4f}" for r, a in zip(hist.rounds, hist.accuracy)))
    elif opts.mode == "client":
        from neuratlas.paradigms.federated.flower import run_client

        run_client(run, opts.address, opts.id, opts.attack, opts.drop_at_round, opts.hang_at_round)
    else:
        from neuratlas.paradigms.federated.flower import launch_local

        args = ["--recipe", opts.recipe, *as_args(parsed.sections)]
        code, text = launch_local(args, _given(opts.clients, 2), port, out)
        print("\n".join(ln for ln in text.splitlines() if "neuratlas.paradigms.federated" in ln or "round" in ln))
        return code
    return 0


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def _engine_exit(code: int, out: Path, timeout: float) -> int:
    """What a run on a Flower engine ends with: 0, or one line naming the cause and where the logs are."""
    if code == 0:
        return 0
    logs = f"the logs of every Flower process are in {out}/flower-*/"
    if code == -1:
        raise NeuratlasError(f"the Flower run did not finish within --timeout {timeout:g} s; {logs}")
    raise NeuratlasError(f"the Flower run did not complete its rounds (exit status {code}); {logs}")
