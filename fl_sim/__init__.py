"""fl-sim: measure what a curious federated-learning server learns about each user."""
