"""Federated learning: an in-process simulation (FedAvg, FedProx, FedAdam; IID and Dirichlet splits;
validated updates and robust aggregation; DP-FedAvg) and a real deployment on Flower (``neuratlas federated
server|client``) reusing the same client and server code. A run is federated when its config has a
``federated`` section; :func:`fit_federated` trains it."""

from neuratlas.paradigms.federated.core import (
    FederatedConfig,
    History,
    ServerAggregator,
    Update,
    aggregate,
    centralised,
    dirichlet_split,
    get_weights,
    iid_split,
    local_steps,
    plot_histories,
    robust_aggregate,
    screen_updates,
    set_weights,
    simulate,
)
from neuratlas.paradigms.federated.run import federated_setup, fit_federated

__all__ = [
    "FederatedConfig",
    "History",
    "ServerAggregator",
    "Update",
    "aggregate",
    "centralised",
    "dirichlet_split",
    "federated_setup",
    "fit_federated",
    "get_weights",
    "iid_split",
    "local_steps",
    "plot_histories",
    "robust_aggregate",
    "screen_updates",
    "set_weights",
    "simulate",
]
