"""Federated learning: an in-process simulation (FedAvg, FedProx, IID and Dirichlet splits, DP-FedAvg)
and a real deployment on Flower (``neuratlas federated server|client``) reusing the same client code."""

from neuratlas.paradigms.federated.core import (
    FederatedConfig,
    History,
    aggregate,
    centralised,
    dirichlet_split,
    get_weights,
    iid_split,
    local_train,
    plot_histories,
    set_weights,
    simulate,
)

__all__ = ["FederatedConfig", "History", "aggregate", "centralised", "dirichlet_split", "get_weights",
           "iid_split", "local_train", "plot_histories", "set_weights", "simulate"]
