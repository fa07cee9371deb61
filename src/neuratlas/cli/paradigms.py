"""ddp, federated: training paradigms that are more than one process (``finetune`` is an alias of train).

neuratlas finetune lite0-fashion-finetune --transfer.freeze 'stem.*' --trainer.max_steps 100
neuratlas federated sim --fed.alpha 0.5 --fed.rounds 10
neuratlas federated launch --clients 3 --fed.rounds 2          # Flower server + clients on loopback
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
from neuratlas.config import build_config
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
    """Federated learning: `sim` simulates every client in this process and compares FedAvg/FedProx;
    `server` and `client` are Flower processes talking gRPC; `launch` starts a server and --clients clients on
    loopback. The experiment itself is the --fed.KEY section, the same for every process."""

    mode: Literal["sim", "server", "client", "launch"] = positional("what this process is")
    address: str = "127.0.0.1:8080"  # host:port of the Flower server
    min_clients: int = 2  # server: clients needed before a round starts
    clients: int = 2  # launch: client processes to start
    id: int = 0  # client: which shard of the split this client holds
    corrupt: bool = False  # client: send wrongly shaped updates (for testing the server's checks)
    drop_at_round: int = 0  # client: die during this round (for testing; 0: never)
    round_timeout: float = 120.0  # server: seconds to wait for a round
    out: str = "runs/federated"  # folder for history.json and the accuracy plot


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
    from neuratlas.paradigms.federated.core import FederatedConfig

    return {"fed": FederatedConfig}


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
    from neuratlas.paradigms.federated.core import FederatedConfig

    cfg = build_config(FederatedConfig, parsed.sections.get("fed", {}), where="fed")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logging.getLogger("neuratlas").addHandler(handler)
    if opts.mode in ("server", "client"):
        import torch

        torch.set_num_threads(1)  # several processes share the machine: no thread oversubscription
    out = Path(opts.out)
    if opts.mode == "sim":
        from neuratlas.recipes.paradigms import federated_comparison

        for line in federated_comparison(cfg, out):
            print(line)
    elif opts.mode == "server":
        from neuratlas.paradigms.federated.flower import run_server

        hist = run_server(cfg, opts.address, opts.min_clients, out, opts.round_timeout)
        print("round accuracy: " + ", ".join(f"{r}:{a:.4f}" for r, a in zip(hist.rounds, hist.accuracy)))
    elif opts.mode == "client":
        from neuratlas.paradigms.federated.flower import run_client

        run_client(cfg, opts.address, opts.id, opts.corrupt, opts.drop_at_round)
    else:
        from neuratlas.paradigms.federated.flower import launch_local

        port = int(opts.address.rsplit(":", 1)[1])
        code, text = launch_local(as_args(parsed.sections), opts.clients, port, out)
        print("\n".join(ln for ln in text.splitlines() if "neuratlas.paradigms.federated" in ln or "round" in ln))
        return code
    return 0
