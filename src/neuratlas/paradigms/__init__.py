"""Training paradigms built on the trainer and tasks: federated learning (simulation and Flower)."""
