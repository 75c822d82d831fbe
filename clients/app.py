"""The ClientApp: each Flower node is one user who trains the received model on their own photos."""

from __future__ import annotations

import zlib
from functools import lru_cache

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.training import evaluate, local_train
from fl_sim.config import RunConfig
from fl_sim.data import UserData, open_dataset
from fl_sim.models import Head, build_model, task_heads, user_labels


@lru_cache(maxsize=256)
def load_user(dataset: str, user: str, size: int, n_train: int, n_holdout: int) -> UserData:
    """One user's photos, split into the local batch and held-out photos (cached per process)."""
    ds = open_dataset(dataset)
    rec = next(r for r in ds.users() if r.user == user)
    imgs = ds.photos(user, size)
    return UserData(user=user, train=imgs[:n_train], holdout=imgs[n_train:n_train + n_holdout],
                    attributes=dict(rec.attributes))


def user_batch(cfg: RunConfig, user: str, heads: list[Head]) -> tuple[UserData, torch.Tensor, torch.Tensor]:
    """(user data, train labels, holdout labels) for ``user`` under ``cfg``."""
    d = cfg.data
    data = load_user(d.dataset, user, d.image_size, d.photos_per_user, d.holdout_per_user)
    lab = torch.tensor(user_labels(heads, user, data.attributes), dtype=torch.long)
    return data, lab.expand(len(data.train), -1), lab.expand(len(data.holdout), -1)


def local_seed(seed: int, rnd: int, user: str) -> int:
    """Per-user, per-round shuffling seed: stable across processes (no Python hash salt)."""
    return zlib.crc32(f"{seed}:{rnd}:{user}".encode())


def make_client_app(cfg: RunConfig, users: list[str]) -> ClientApp:
    """A ClientApp for ``users`` (partition-id i is users[i])."""
    app = ClientApp()
    heads = task_heads(cfg.task, users)
    models: list[torch.nn.Module] = []  # one per actor process, reused across messages

    def _setup(msg: Message, context: Context) -> tuple[str, int, torch.nn.Module]:
        if not models:
            torch.set_num_threads(cfg.simulation.torch_threads)
            models.append(build_model(cfg.model.name, heads, cfg.data.image_size, cfg.model.width, cfg.seed))
        pid = int(context.node_config["partition-id"])
        model = models[0]
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        return users[pid], pid, model

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        content = RecordDict({"user": ConfigRecord({"user": users[pid]}), "metrics": MetricRecord({"partition-id": pid})})
        return Message(content=content, reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        user, pid, model = _setup(msg, context)
        rnd = int(msg.content["config"]["server-round"])
        data, y, _ = user_batch(cfg, user, heads)
        res = local_train(model, data.train, y, heads, protocol=cfg.protocol, lr=cfg.lr, epochs=cfg.local_epochs,
                          batch_size=cfg.local_batch_size, seed=local_seed(cfg.seed, rnd, user))
        metrics = MetricRecord({"num-examples": res.num_examples, "local-steps": res.local_steps, "lr": cfg.lr,
                                "loss": res.loss, "partition-id": pid})
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        user, pid, model = _setup(msg, context)
        data, _, y = user_batch(cfg, user, heads)
        res = evaluate(model, data.holdout, y, heads)
        metrics = MetricRecord({"num-examples": len(data.holdout), "partition-id": pid, **res})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app
