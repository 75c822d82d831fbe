"""Turn what the server received (global weights, a client's reply) into an attack `Observation`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from attacks.observation import Observation
from fl_sim.core.config import RunConfig
from fl_sim.core.records import ClientUpdate
from fl_sim.core.models import Head, build_model, task_loss


def _t(v: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v).detach().clone()


def global_model(cfg: RunConfig, heads: list[Head], global_state: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The round's global model (the architecture is public) and its parameters as tensors."""
    model = build_model(cfg.model.name, heads, cfg.data.image_size, cfg.model.width, cfg.seed, cfg.model.norm)
    params = {k: _t(v).float() for k, v in global_state.items() if k in dict(model.named_parameters())}
    model.load_state_dict({k: _t(v) for k, v in global_state.items()}, strict=False)
    return model.eval(), params


def build_observation(cfg: RunConfig, heads: list[Head], global_state: dict[str, Any], client_state: dict[str, Any],
                      metrics: Mapping[str, Any] | ClientUpdate, *, rnd: int, user: str | None,
                      aggregate_size: int = 1,
                      shared: tuple[torch.nn.Module, dict[str, torch.Tensor]] | None = None,
                      unknown: tuple[str, ...] = ()) -> Observation:
    """The observation of one reply: only public facts (config, task, weights) and the update.

    ``metrics``: the reply's figures (a ``ClientUpdate``, or metric names as a client reports them;
    absent ones default to the run's). ``shared``: the round's ``global_model(...)``, built once for
    all of a round's replies. ``unknown``: parameters whose update is not this user's alone (attacks skip them).
    """
    figures = metrics if isinstance(metrics, ClientUpdate) else ClientUpdate.from_metrics(
        metrics, user=user, round=rnd, arrays=client_state, num_examples=cfg.data.photos_per_user, lr=cfg.lr)
    model, params = shared or global_model(cfg, heads, global_state)
    update = {k: params[k] - _t(client_state[k]).float() for k in params}
    return Observation(
        model=model, global_params=params, update=update, protocol=cfg.protocol,
        num_examples=figures.num_examples, lr=figures.lr,
        loss_fn=partial(task_loss, heads=heads), heads=tuple((h.name, len(h.classes)) for h in heads),
        image_shape=(3, cfg.data.image_size, cfg.data.image_size), local_steps=figures.local_steps,
        local_epochs=cfg.local_epochs, local_batch_size=cfg.local_batch_size, aggregate_size=aggregate_size,
        round=rnd, user=user, unknown=unknown)


@dataclass
class RoundReplies:
    """One round's chosen replies as plain arrays: what the server ships to the attack worker,
    which turns them into observations itself (so the server's round does not pay for it)."""

    cfg: RunConfig
    heads: list[Head]
    rnd: int
    global_state: dict[str, Any]
    updates: list[ClientUpdate]
    users: list[str | None]  # the target of each (None for an aggregate)
    aggregate_size: int = 1
    unknown: tuple[str, ...] = ()  # parameters a malicious server's recovery left mixed (the attacks skip them)

    def observations(self) -> list[Observation]:
        shared = global_model(self.cfg, self.heads, self.global_state)  # one model for the whole round
        return [build_observation(self.cfg, self.heads, self.global_state, dict(up.arrays), up, rnd=self.rnd,
                                  user=u, aggregate_size=self.aggregate_size, shared=shared,
                                  unknown=self.unknown)
                for up, u in zip(self.updates, self.users)]
