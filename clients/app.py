"""The ClientApp: each Flower node is one user who trains the received model on their own photos."""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.training import LocalTrainResult, dp_local_train, local_train
from fl_sim.core.config import RunConfig
from fl_sim.core.defenses import compress_update, user_defenses
from fl_sim.core.models import build_model, evaluate, task_heads
from fl_sim.core.userbatch import local_seed, user_batch

ACCOUNTANT_KEY = "dp-sgd-accountant"  # this node's Opacus accountant, kept in Flower's per-node state


def _load_accountant(context: Context) -> dict[str, Any] | None:
    rec = context.state.config_records.get(ACCOUNTANT_KEY)
    if rec is None:
        return None
    state = json.loads(str(rec["state"]))
    return {"history": [tuple(h) for h in state["history"]], "mechanism": state["mechanism"]}


def _save_accountant(context: Context, state: dict[str, Any]) -> None:
    context.state.config_records[ACCOUNTANT_KEY] = ConfigRecord({"state": json.dumps(
        {"history": [list(h) for h in state["history"]], "mechanism": state["mechanism"]})})


def train_mods(cfg: RunConfig) -> list[Any]:
    """Flower mods around the train handler: SecAgg+, client-side clipping or local DP (every user)."""
    mods: list[Any] = []
    mode = cfg.defenses.user_dp.mode
    if mode == "client-fixed":
        from flwr.clientapp.mod import fixedclipping_mod

        mods.append(fixedclipping_mod)
    elif mode == "local":
        from flwr.clientapp.mod import LocalDpMod

        ud = cfg.defenses.user_dp
        mods.append(LocalDpMod(ud.clipping_norm, ud.clipping_norm, ud.local_epsilon, ud.local_delta))
    if cfg.defenses.secagg.enabled:
        from flwr.client.mod import secaggplus_mod

        mods.insert(0, secaggplus_mod)  # outermost: it masks what the handler (and any other mod) returns
    return mods


def make_client_app(cfg: RunConfig, users: list[str]) -> ClientApp:
    """A ClientApp for ``users`` (partition-id i is users[i])."""
    app = ClientApp()
    heads = task_heads(cfg.task, users)
    defenses = user_defenses(cfg, users)
    models: list[torch.nn.Module] = []  # one per actor process, reused across messages

    def _model() -> torch.nn.Module:
        if not models:
            torch.set_num_threads(cfg.simulation.torch_threads)
            models.append(build_model(cfg.model.name, heads, cfg.data.image_size, cfg.model.width, cfg.seed,
                                      cfg.model.norm))
        return models[0]

    def _setup(msg: Message, context: Context) -> tuple[str, int, torch.nn.Module]:
        pid = int(context.node_config["partition-id"])
        model = _model()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        return users[pid], pid, model

    def _train(user: str, pid: int, model: torch.nn.Module, rnd: int,
               context: Context) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Train ``model`` under this user's defenses: (new weights, reply metrics)."""
        data, y, _ = user_batch(cfg, user, heads)
        d = defenses[user]
        seed = local_seed(cfg.seed, rnd, user)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        extra: dict[str, Any] = {}
        if "dp_sgd" in d:
            p = d["dp_sgd"]
            # DP-SGD's own lr / batch / epochs (fl_sim.core.defenses.dp_sgd_training), not the run's
            r = dp_local_train(model, data.train, y, heads, protocol=cfg.protocol, lr=p["lr"], epochs=p["epochs"],
                               batch_size=p["batch_size"], seed=seed, noise_multiplier=p["noise_multiplier"],
                               max_grad_norm=p["max_grad_norm"], delta=p["delta"], accountant=p["accountant"],
                               accountant_state=_load_accountant(context))
            _save_accountant(context, r.accountant_state)
            res: LocalTrainResult = r.result
            extra = {"dp-noise-multiplier": float(p["noise_multiplier"]), "dp-max-grad-norm": float(p["max_grad_norm"]),
                     "dp-delta": float(p["delta"]), "dp-sample-rate": float(p["sample_rate"]),
                     "dp-steps": int(sum(h[2] for h in r.accountant_state["history"]))}
            if math.isfinite(r.epsilon):  # z = 0: clipping only, no guarantee, no epsilon
                extra["dp-epsilon"] = r.epsilon
        else:
            res = local_train(model, data.train, y, heads, protocol=cfg.protocol, lr=cfg.lr, epochs=cfg.local_epochs,
                              batch_size=cfg.local_batch_size, seed=seed)
        state = model.state_dict()
        if "compression" in d:
            state = compress_update(before, state, d["compression"], seed)
        # How many photos carried a label: 0 means the update holds nothing about this user.
        labelled = int((y >= 0).any(dim=1).sum())
        metrics = {"num-examples": res.num_examples, "local-steps": res.local_steps,
                   "lr": d["dp_sgd"]["lr"] if "dp_sgd" in d else cfg.lr,
                   "loss": res.loss, "labelled-examples": labelled, "partition-id": pid, **extra}
        return state, metrics

    def _train_legacy(msg: Message, context: Context) -> Message:
        # SecAgg+ runs on Flower's legacy workflow: weights arrive as ordered arrays in FitIns.
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.compat.common import recorddict_compat as compat

        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        model = _model()
        keys = list(model.state_dict())
        arrays = parameters_to_ndarrays(fitins.parameters)
        model.load_state_dict({k: torch.from_numpy(a.copy()) for k, a in zip(keys, arrays, strict=True)})
        pid = int(context.node_config["partition-id"])
        state, metrics = _train(users[pid], pid, model, int(fitins.config["server-round"]), context)
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([state[k].numpy() for k in keys]),
                     int(metrics["num-examples"]), metrics)
        return Message(content=compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        content = RecordDict({"user": ConfigRecord({"user": users[pid]}), "metrics": MetricRecord({"partition-id": pid})})
        return Message(content=content, reply_to=msg)

    @app.train(mods=train_mods(cfg))
    def train(msg: Message, context: Context) -> Message:
        if cfg.defenses.secagg.enabled:
            return _train_legacy(msg, context)
        user, pid, model = _setup(msg, context)
        rnd = int(msg.content["config"]["server-round"])
        state, metrics = _train(user, pid, model, rnd, context)
        # Privacy figures go in their own ConfigRecord: FedAvg aggregates MetricRecords only when every
        # reply has the same keys, and defenses can differ per user.
        privacy = {k: metrics.pop(k) for k in list(metrics) if k.startswith("dp-")}
        content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics),
                              "privacy": ConfigRecord(privacy)})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        user, pid, model = _setup(msg, context)
        data, _, y = user_batch(cfg, user, heads)
        res = evaluate(model, data.holdout, y, heads)
        metrics = MetricRecord({"num-examples": len(data.holdout), "partition-id": pid, **res})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app
