"""The one translation between fl-sim's typed records and Flower's (RecordDict, Message API; FitRes, legacy API)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fl_sim.core.records import NUM_EXAMPLES, PARTITION_ID, ClientUpdate

ARRAYS, METRICS, PRIVACY, CONFIG, USER = "arrays", "metrics", "privacy", "config", "user"
CHECKS = "checks"  # the defenses' checks of the received model: defense name -> its record as JSON
CHECK_PREFIX = "check-"  # the same in a legacy FitRes's metrics: "check-<defense>" -> JSON
SERVER_ROUND = "server-round"


# -- Message API: a training reply -------------------------------------------------------------
def update_content(update: ClientUpdate) -> RecordDict:
    """A reply's content: weights, metrics (the same keys from every user) and, apart, the privacy figures
    (FedAvg aggregates MetricRecords only when every reply has the same keys, and defenses differ per user)."""
    arrays = {k: v for k, v in update.arrays.items() if isinstance(v, torch.Tensor)}
    if len(arrays) != len(update.arrays):
        raise TypeError("a client's update is sent as torch tensors")
    content = RecordDict({ARRAYS: ArrayRecord(arrays), METRICS: MetricRecord(dict(update.metrics())),
                          PRIVACY: ConfigRecord(dict(update.privacy_metrics()))})
    if update.checks:
        content[CHECKS] = ConfigRecord({k: json.dumps(v) for k, v in update.checks.items()})
    return content


def read_update(content: RecordDict, *, user: str | None, round: int, defenses: tuple[str, ...] = ()) -> ClientUpdate:
    """What the server received in a training reply, as numpy weights and typed figures."""
    arrays: dict[str, npt.NDArray[Any]] = {k: v.numpy() for k, v in content.array_records[ARRAYS].items()}
    privacy = dict(content.config_records[PRIVACY]) if PRIVACY in content.config_records else None
    checks = ({str(k): json.loads(str(v)) for k, v in content.config_records[CHECKS].items()}
              if CHECKS in content.config_records else None)
    return ClientUpdate.from_metrics(dict(content.metric_records[METRICS]), user=user, round=round, arrays=arrays,
                                     privacy=privacy, defenses=defenses, checks=checks)


def server_round(content: RecordDict) -> int:
    """The round a train instruction belongs to."""
    return int(cast(int, content.config_records[CONFIG][SERVER_ROUND]))


# -- Message API: the node -> user query and the federated evaluation --------------------------
def user_query() -> RecordDict:
    """The server's "which user are you" question to a node."""
    return RecordDict({CONFIG: ConfigRecord({})})


def user_reply(user: str, partition_id: int) -> RecordDict:
    """A node's answer to the server's "which user are you" query."""
    return RecordDict({USER: ConfigRecord({USER: user}), METRICS: MetricRecord({PARTITION_ID: partition_id})})


def read_user(content: RecordDict) -> str:
    """The user a node said it is."""
    return str(content.config_records[USER][USER])


def evaluation_content(num_examples: int, partition_id: int, metrics: Mapping[str, Any]) -> RecordDict:
    """A node's held-out evaluation reply."""
    return RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: num_examples, PARTITION_ID: partition_id, **metrics})})


def read_evaluation(content: RecordDict) -> dict[str, Any]:
    """A node's evaluation metrics (accuracy, loss, ...)."""
    return dict(content.metric_records[METRICS])


# -- legacy API (SecAgg+ runs on Flower's DefaultWorkflow with FitIns / FitRes) ------------------
def read_fitins(content: RecordDict) -> tuple[list[npt.NDArray[Any]], int]:
    """The global weights (ordered as the model's state dict) and the round of a legacy train instruction."""
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    return parameters_to_ndarrays(fitins.parameters), int(fitins.config[SERVER_ROUND])


def fitres_content(update: ClientUpdate, keys: list[str]) -> RecordDict:
    """A legacy FitRes reply (weights in ``keys`` order; every figure, privacy included, in its metrics)."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    arrays = [_numpy(update.arrays[k]) for k in keys]
    metrics: dict[str, Any] = dict(update.stored_metrics())
    metrics.update({CHECK_PREFIX + k: json.dumps(v) for k, v in (update.checks or {}).items()})
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), update.num_examples, metrics)
    return compat.fitres_to_recorddict(res, keep_input=False)


def read_fitres(res: Any, *, round: int) -> ClientUpdate:
    """A legacy FitRes's figures (its weights are SecAgg+-masked: not one user's, so not kept)."""
    checks = {k[len(CHECK_PREFIX):]: json.loads(str(v)) for k, v in res.metrics.items() if k.startswith(CHECK_PREFIX)}
    update = ClientUpdate.from_metrics(res.metrics, user=None, round=round, arrays={}, checks=checks)
    return dataclasses.replace(update, num_examples=int(res.num_examples))


def _numpy(v: Any) -> npt.NDArray[Any]:
    return v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
