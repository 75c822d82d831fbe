"""Attacks on single updates: inversion methods, priors and metrics (no Flower, no ground truth)."""
