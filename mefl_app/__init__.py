"""mefl's Flower app: what a ServerApp and a ClientApp run (the bundle ``flwr run`` ships)."""
