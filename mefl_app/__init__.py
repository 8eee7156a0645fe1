"""mefl: multi-exit federated learning on Flower."""
