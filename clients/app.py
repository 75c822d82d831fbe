"""The ClientApp: each Flower node is one user who trains the received model on their own photos."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from clients.training import local_train
from fl_sim.core import defenses as defense_registry
from fl_sim.core.config import RunConfig
from fl_sim.core.defenses import Received, TrainBatch, user_defenses
from fl_sim.core.flwr_records import (evaluation_content, fitres_content, read_fitins, server_round, update_content,
                                      user_reply)
from fl_sim.core.models import build_model, evaluate, task_heads, with_variant
from fl_sim.core.records import ClientUpdate
from fl_sim.core.userbatch import local_seed, user_batch


class FlowerNodeState:
    """A node's text state between rounds, kept in Flower's per-node ``context.state``."""

    def __init__(self, context: Context, resumed: dict[str, str] | None = None) -> None:
        """``resumed``: the user's state as a resumed run rebuilt it from the store (read until the node saves its
        own)."""
        self.context = context
        self.resumed = resumed or {}

    def load(self, key: str) -> str | None:
        rec = self.context.state.config_records.get(key)
        return self.resumed.get(key) if rec is None else str(rec["state"])

    def save(self, key: str, text: str) -> None:
        self.context.state.config_records[key] = ConfigRecord({"state": text})


def make_client_app(cfg: RunConfig, users: list[str], run_dir: Path | None = None,
                    resumed: dict[str, dict[str, str]] | None = None) -> ClientApp:
    """A ClientApp for ``users`` (partition-id i is users[i]); ``run_dir``: the run folder where the clients can
    reach it (a defense's shared files, e.g. model_check's transparency log); ``resumed``: per user, the node state a
    resumed run rebuilt (e.g. DP-SGD's accountant), which Flower's fresh node contexts do not have."""
    app = ClientApp()
    heads = task_heads(cfg.task, users)
    defenses = user_defenses(cfg, users)
    legacy = defense_registry.aggregate_only(cfg) is not None  # e.g. SecAgg+: Flower's legacy FitIns / FitRes
    models: list[torch.nn.Module] = []  # one per actor process, reused across messages

    def _model() -> torch.nn.Module:
        if not models:
            torch.set_num_threads(cfg.simulation.torch_threads)
            models.append(build_model(cfg.model.name, heads, cfg.data.image_size, cfg.model.width, cfg.seed,
                                      cfg.model.norm))
        return models[0]

    variants: dict[str, torch.nn.Module] = {}  # spec -> the variant around the shared model (its modules shared)

    def _variant(msg: Message) -> torch.nn.Module:
        """The model the instruction describes: the shared one, or the variant its config names (``model-variant``,
        e.g. a malicious server's imprint block) — an honest client trains whatever it is sent."""
        conf = msg.content.config_records.get("config")
        spec = str(conf.get("model-variant", "")) if conf is not None else ""
        if not spec:
            return _model()
        if spec not in variants:
            variants[spec] = with_variant(_model(), spec, cfg.data.image_size)
        return variants[spec]

    def _setup(msg: Message, context: Context) -> tuple[str, int, torch.nn.Module]:
        pid = int(context.node_config["partition-id"])
        model = _variant(msg)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        return users[pid], pid, model

    def _check(user: str, pid: int, rnd: int,
               read: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], ClientUpdate | None]:
        """The user's defenses' checks of the model it received (``read()``: its arrays, read only when a check
        runs: no copy on every message otherwise), before anything is loaded: their records, and the refusal to
        send instead of training (None: train). A refusal sends back what was received."""
        if not defense_registry.checks_received(defenses[user]):
            return {}, None
        received = read()
        expected = {k: tuple(v.shape) for k, v in _model().state_dict().items()}
        where = str(run_dir.resolve()) if run_dir is not None else ""
        checks, refuse = defense_registry.check_received(defenses[user], Received(
            rnd, user, received, expected, run_dir=where, run_id=run_dir.name if run_dir is not None else ""))
        if not refuse:
            return checks, None
        _, y, _ = user_batch(cfg, user, heads)
        arrays = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in received.items()}
        # No update: the reply is the received model, weighted as usual (so a crafted round's arithmetic is
        # unchanged) but holding nothing of the user's photos; no step was taken.
        return checks, ClientUpdate(user=user, round=rnd, arrays=arrays, num_examples=len(y), local_steps=0,
                                    lr=cfg.lr, loss=math.nan, labelled_examples=int((y >= 0).any(dim=1).sum()),
                                    partition_id=pid, defenses=tuple(defenses[user]), checks=checks)

    def _train(user: str, pid: int, model: torch.nn.Module, rnd: int, context: Context,
               checks: dict[str, Any] | None = None) -> ClientUpdate:
        """Train ``model`` under this user's defenses: their update, as the server will receive it."""
        data, y, _ = user_batch(cfg, user, heads)
        d = defenses[user]
        seed = local_seed(cfg.seed, rnd, user)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        batch = TrainBatch(model, data.train, y, heads, cfg.protocol, seed)
        trained = defense_registry.train_under(d, batch, FlowerNodeState(context, (resumed or {}).get(user)))
        if trained is None:
            res = local_train(model, data.train, y, heads, protocol=cfg.protocol, lr=cfg.lr, epochs=cfg.local_epochs,
                              batch_size=cfg.local_batch_size, seed=seed)
            lr, privacy = cfg.lr, None
        else:
            res, lr, privacy = trained.result, trained.lr, trained.privacy
        state = defense_registry.after_train(d, before, model.state_dict(), seed)
        # How many photos carried a label: 0 means the update holds nothing about this user.
        labelled = int((y >= 0).any(dim=1).sum())
        return ClientUpdate(user=user, round=rnd, arrays=state, num_examples=res.num_examples,
                            local_steps=res.local_steps, lr=lr, loss=res.loss, labelled_examples=labelled,
                            partition_id=pid, defenses=tuple(d), privacy=privacy, checks=checks or None)

    def _train_legacy(msg: Message, context: Context) -> Message:
        # SecAgg+ runs on Flower's legacy workflow: weights arrive as ordered arrays in FitIns.
        arrays, rnd = read_fitins(msg.content)
        model = _model()
        keys = list(model.state_dict())
        pid = int(context.node_config["partition-id"])
        checks, refusal = _check(users[pid], pid, rnd, lambda: dict(zip(keys, arrays, strict=True)))
        if refusal is not None:
            return Message(content=fitres_content(refusal, keys), reply_to=msg)
        model.load_state_dict({k: torch.from_numpy(a.copy()) for k, a in zip(keys, arrays, strict=True)})
        update = _train(users[pid], pid, model, rnd, context, checks)
        return Message(content=fitres_content(update, keys), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        return Message(content=user_reply(users[pid], pid), reply_to=msg)

    @app.train(mods=defense_registry.client_mods(cfg))
    def train(msg: Message, context: Context) -> Message:
        if legacy:
            return _train_legacy(msg, context)
        pid, rnd = int(context.node_config["partition-id"]), server_round(msg.content)
        checks, refusal = _check(users[pid], pid, rnd, lambda: {k: v.numpy() for k, v in msg.content["arrays"].items()})
        if refusal is not None:
            return Message(content=update_content(refusal), reply_to=msg)
        user, pid, model = _setup(msg, context)
        update = _train(user, pid, model, rnd, context, checks)
        return Message(content=update_content(update), reply_to=msg)

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        user, pid, model = _setup(msg, context)
        data, _, y = user_batch(cfg, user, heads)
        res = evaluate(model, data.holdout, y, heads)
        return Message(content=evaluation_content(len(data.holdout), pid, res), reply_to=msg)

    return app
