"""Utility: every user's held-out accuracy under a global model (the experimenter's view, not the server's)."""

from __future__ import annotations

from typing import Any

import torch

from fl_sim.core.config import RunConfig
from fl_sim.core.models import build_model, evaluate, task_heads
from fl_sim.core.userbatch import user_batch


class HoldoutEvaluator:
    """Evaluates a global model on each user's held-out photos, as each client would.

    It lives in the simulation harness: the strategies (and so the curious server) never hold it.
    Its numbers equal Flower's federated evaluation (example-weighted mean of the clients'
    metrics), without a message round per round. It holds no user's photos between rounds: each is read when it
    is evaluated (``user_batch``'s bounded cache), so its memory does not grow with the number of users.
    With ``utility_users`` set it evaluates that fixed sample of users every round, so its time does not either.
    """

    def __init__(self, cfg: RunConfig, users: list[str]) -> None:
        self.cfg = cfg
        self.users = cfg.utility_sample(users)
        self.heads = task_heads(cfg.task, users)
        self.model = build_model(cfg.model.name, self.heads, cfg.data.image_size, cfg.model.width, cfg.seed, cfg.model.norm)

    def __call__(self, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        self.model.load_state_dict(state)
        per_user: dict[str, float] = {}
        sums: dict[str, float] = {}
        total = 0
        for u in self.users:
            data, _, y = user_batch(self.cfg, u, self.heads)
            res = evaluate(self.model, data.holdout, y, self.heads)
            n = len(data.holdout)
            per_user[u] = res["accuracy"]
            total += n
            for k, v in res.items():
                sums[k] = sums.get(k, 0.0) + v * n
        metrics = {k: v / total for k, v in sums.items()}
        return {"metrics": metrics, "per_user_accuracy": per_user}
