"""finetune, federated, ddp: training paradigms that are more than one Trainer.fit.

    neuratlas finetune lite0-fashion-finetune --transfer.freeze 'stem.*' --trainer.max_steps 100
    neuratlas federated sim --fed.alpha 0.5 --fed.rounds 10
    neuratlas federated launch --clients 3 --fed.rounds 2          # Flower server + clients on loopback
    neuratlas federated server --address 127.0.0.1:8080 --min-clients 2
    neuratlas federated client --address 127.0.0.1:8080 --id 0
    neuratlas ddp --nproc 2 mlp-fashion-quick          # = torchrun --nproc-per-node 2 -m neuratlas train
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from neuratlas.config import build_config, parse_overrides
from neuratlas.errors import NeuratlasError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="an alias of `train` (transfer is the run's --transfer.* section)",
                       description="The same as `neuratlas train RECIPE`: every run takes --transfer.checkpoint "
                       "RUN|imagenet-lite0, --transfer.freeze 'stem.*,stages.0.*', --transfer.lr_decay 0.5, "
                       "--transfer.unfreeze_every 50, --transfer.lora_rank 8, beside any other --section.key "
                       "override.")
    p.add_argument("recipe")
    p.set_defaults(func=cmd_finetune, accepts_overrides=True)

    p = sub.add_parser("ddp", help="data-parallel training: torchrun N processes of `neuratlas train`",
                       description="Launch `neuratlas train RECIPE [overrides]` in NPROC processes on this "
                       "machine with DistributedDataParallel (gloo on CPU, NCCL on GPU); the same as "
                       "`torchrun --nproc-per-node NPROC -m neuratlas train RECIPE ...`. --data.batch_size "
                       "stays the global batch; each process takes 1/NPROC of it.")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("recipe")
    p.set_defaults(func=cmd_ddp, accepts_overrides=True)

    p = sub.add_parser("federated", help="federated learning: simulation, or Flower server/clients",
                       description="Options of the experiment are --fed.KEY value (clients, rounds, "
                                   "fraction, local_epochs, strategy fedavg|fedprox, prox_mu, alpha (0 = "
                                   "IID), model, limit_train, dp_clip, dp_noise, seed).")
    p.add_argument("mode", choices=["sim", "server", "client", "launch"])
    p.add_argument("--address", default="127.0.0.1:8080", help="host:port of the Flower server")
    p.add_argument("--min-clients", type=int, default=2, help="server: clients needed before a round starts")
    p.add_argument("--clients", type=int, default=2, help="launch: client processes to start")
    p.add_argument("--id", type=int, default=0, help="client: which shard of the split this client holds")
    p.add_argument("--corrupt", action="store_true", help="client: send wrongly shaped updates (for testing)")
    p.add_argument("--drop-at-round", type=int, default=0, help="client: die during this round (for testing)")
    p.add_argument("--round-timeout", type=float, default=120.0, help="server: seconds to wait for a round")
    p.add_argument("--out", default="runs/federated", help="folder for history.json and the accuracy plot")
    p.set_defaults(func=cmd_federated, accepts_overrides=True)


def cmd_finetune(args: argparse.Namespace, extra: list[str]) -> int:
    from neuratlas.cli.core import cmd_train

    return cmd_train(argparse.Namespace(recipe=args.recipe, resume=None, help=False), extra)


def cmd_ddp(args: argparse.Namespace, extra: list[str]) -> int:
    from neuratlas.training.distributed import launch

    if args.nproc < 1:
        raise NeuratlasError(f"--nproc must be ≥ 1, got {args.nproc}")
    return launch(args.nproc, ["train", args.recipe, *extra])


def cmd_federated(args: argparse.Namespace, extra: list[str]) -> int:
    from neuratlas.paradigms.federated.core import FederatedConfig

    overrides = parse_overrides(extra)
    bad = [k for k in overrides if not k.startswith("fed.")]
    if bad:
        raise NeuratlasError(f"federated options are --fed.KEY value; got --{bad[0]}")
    cfg = build_config(FederatedConfig, {k[4:]: v for k, v in overrides.items()}, where="fed")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logging.getLogger("neuratlas").addHandler(handler)
    if args.mode in ("server", "client"):
        import torch

        torch.set_num_threads(1)  # several processes share the machine: no thread oversubscription
    out = Path(args.out)
    if args.mode == "sim":
        from neuratlas.recipes.paradigms import federated_comparison

        for line in federated_comparison(cfg, out):
            print(line)
    elif args.mode == "server":
        from neuratlas.paradigms.federated.flower import run_server

        hist = run_server(cfg, args.address, args.min_clients, out, args.round_timeout)
        print("round accuracy: " + ", ".join(f"{r}:{a:.4f}" for r, a in zip(hist.rounds, hist.accuracy)))
    elif args.mode == "client":
        from neuratlas.paradigms.federated.flower import run_client

        run_client(cfg, args.address, args.id, args.corrupt, args.drop_at_round)
    else:
        from neuratlas.paradigms.federated.flower import launch_local

        port = int(args.address.rsplit(":", 1)[1])
        code, text = launch_local(extra, args.clients, port, out)
        print("\n".join(ln for ln in text.splitlines() if "neuratlas.paradigms.federated" in ln or "round" in ln))
        return code
    return 0
