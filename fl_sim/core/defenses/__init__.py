"""Client defenses, one file each behind `base.Defense`: who uses which, what each does and what it leaves the server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fl_sim.core.defenses.base import (DEFENSES, EXACT_UPDATE, Defense, NodeState, Received, Record, RunView,
                                       StrategyWrapper, Trained, TrainBatch, Verdict, register_defense)
from fl_sim.core.defenses.compression import COMPRESSION, CompressionConfig, compress_update
from fl_sim.core.defenses.model_check import (MODEL_CHECK, ModelCheckConfig, TransparencyLog, imprint_like,
                                              model_digest)
from fl_sim.core.defenses.dp_sgd import (DP_SGD, DpSgdConfig, DpTrainResult, dp_local_train, dp_sgd_noise,
                                         dp_sgd_schedule, dp_sgd_training)
from fl_sim.core.defenses.secagg import SECAGG, SecAggConfig
from fl_sim.core.defenses.user_dp import USER_DP, USER_DP_VISIBILITY, UserDpConfig
from fl_sim.core.users import check_user_choice, choose_users

__all__ = ["COMPRESSION", "DEFENSES", "DP_SGD", "MODEL_CHECK", "SECAGG", "USER_DP", "USER_DP_VISIBILITY",
           "CompressionConfig", "Defense", "DpSgdConfig", "DpTrainResult", "ModelCheckConfig", "NodeState", "Received",
           "RunView", "SecAggConfig", "TrainBatch", "Trained", "TransparencyLog", "UserDpConfig", "Verdict",
           "aggregate_only", "apply_implied", "check_received", "checks_received", "client_mods", "compress_update",
           "describe", "dp_local_train", "dp_sgd_noise", "dp_sgd_schedule", "dp_sgd_training", "hides_user",
           "imprint_like", "model_digest", "register_defense", "resumed_states", "sections", "server_wrappers", "train_under",
           "user_defenses", "validate_defenses"]


def sections(pending: bool = True) -> list[Defense[Any]]:
    """Every registered defense in config-section order (``fl-sim config show``, visibility notes).

    ``pending=False``: only those registered so far, importing no pending plugin (what the config's module reads
    while it is imported)."""
    entries = DEFENSES if pending else DEFENSES.registered()
    return sorted((e.obj for e in entries), key=lambda d: d.section_rank)


def _by_record() -> list[Defense[Any]]:
    return sorted((e.obj for e in DEFENSES), key=lambda d: d.record_rank)


def _active(run: RunView) -> list[tuple[Defense[Any], Any]]:
    """(defense, its section) for the defenses ``run`` uses, in record order."""
    return [(d, s) for d in _by_record() if d.active(s := d.section(run))]


def apply_implied(run: RunView, values: Mapping[str, Any]) -> None:
    """Setting a defense's parameter (e.g. a DP-SGD one) turns it on, unless the same source sets ``enabled`` itself."""
    given = values.get("defenses", {}) if isinstance(values.get("defenses"), dict) else {}
    for d in sections():
        keys = given.get(d.name, {})
        if d.switches_on and isinstance(keys, dict) and "enabled" not in keys and set(keys) & d.switches_on:
            d.section(run).enabled = True


def validate_defenses(run: RunView) -> None:
    """Every defense error before any training starts (one line each): user choices first, then each defense."""
    for d in sections():
        if d.per_user:
            check_user_choice(d.section(run).users, f"defenses.{d.name}.users")
    every = {d.name: d.section(run) for d in sections()}
    for d in sections():
        d.validate(every[d.name], run, every)


def user_defenses(run: RunView, users: list[str]) -> dict[str, dict[str, Any]]:
    """Per user: the defenses their updates went through (what the store and every attack record say)."""
    chosen: list[tuple[Defense[Any], Any, set[str]]] = []
    for d, s in _active(run):
        who = set(choose_users(s.users, users, f"{d.name}:{run.seed}", f"defenses.{d.name}.users")
                  ) if d.per_user else set(users)
        chosen.append((d, s, who))
    entries = {d.name: d.record(s, run) for d, s, who in chosen if who}
    return {u: {d.name: dict(entries[d.name]) for d, _, who in chosen if u in who} for u in sorted(users)}


def _known(rec: Mapping[str, Any]) -> list[Defense[Any]]:
    return [d for d in _by_record() if d.name in rec]


def describe(rec: Mapping[str, Any]) -> str:
    """One line: a user's defenses, e.g. 'dp_sgd z=2 C=1; topk 0.1'."""
    return "; ".join(d.describe(rec[d.name]) for d in _known(rec)) or "none"


def hides_user(rec: Mapping[str, Any]) -> str:
    """What the server can see of this user's single update, given their defenses."""
    for d in _known(rec):
        if d.hides_update:
            return d.visibility(rec[d.name])
    notes = [n for d in sections() if d.name in rec and (n := d.visibility(rec[d.name]))]
    return "; ".join(notes) or EXACT_UPDATE


def resumed_states(records: Mapping[str, Mapping[str, Any]],
                   last: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """Per user (``records``: their defenses; ``last``: their last stored update's metrics), the node state their
    defenses kept, rebuilt for a resumed run (users with none are absent)."""
    out: dict[str, dict[str, str]] = {}
    for user, rec in records.items():
        state = {k: v for d in _known(rec) for k, v in d.resumed_state(rec[d.name], last.get(user, {})).items()}
        if state:
            out[user] = state
    return out


def client_mods(run: RunView) -> list[Any]:
    """Flower mods around the client's train handler, outermost first."""
    active = _active(run)
    outer = [m for d, s in active if d.outermost_mods for m in d.client_mods(s)]
    return outer + [m for d, s in active if not d.outermost_mods for m in d.client_mods(s)]


def train_under(rec: Mapping[str, Any], batch: TrainBatch, state: NodeState) -> Trained | None:
    """Train under the first of the user's defenses that trains itself (None: plain local training)."""
    for d in _known(rec):
        trained = d.train(rec[d.name], batch, state)
        if trained is not None:
            return trained
    return None


def checks_received(rec: Mapping[str, Any]) -> bool:
    """Whether any of the user's defenses inspects the model it receives (then the client hands it over)."""
    return any(type(d).check_received is not Defense.check_received for d in _known(rec))


def check_received(rec: Mapping[str, Any], received: Received) -> tuple[dict[str, Record], bool]:
    """Each of the user's defenses' check of the received model: their records (by defense name, for the reply)
    and whether any of them refuses to train on it."""
    records: dict[str, Record] = {}
    refuse = False
    for d in _known(rec):
        verdict = d.check_received(rec[d.name], received)
        if verdict is not None:
            records[d.name] = dict(verdict.record)
            refuse = refuse or verdict.refuse
    return records, refuse


def after_train(rec: Mapping[str, Any], before: dict[str, torch.Tensor], after: dict[str, torch.Tensor],
                seed: int) -> dict[str, torch.Tensor]:
    """The weights a user sends: each of their defenses' transform of the trained weights, in record order."""
    for d in _known(rec):
        after = d.after_train(rec[d.name], before, after, seed)
    return after


def server_wrappers(run: RunView) -> list[StrategyWrapper]:
    """Strategy wrappers the defenses put around the server's strategy, innermost first."""
    return [w for d, s in _active(run) if (w := d.server_wrapper(s, run)) is not None]


def aggregate_only(run: RunView) -> tuple[Defense[Any], Any] | None:
    """The defense (and its section) whose rounds run through an aggregate-only server loop, if the run uses one."""
    return next(((d, s) for d, s in _active(run) if d.aggregate_only), None)


def shared_record(records: Mapping[str, Record]) -> Record:
    """The defense entries every user shares (what an aggregate of all of them went through)."""
    recs = list(records.values())
    return {k: v for k, v in (recs[0] if recs else {}).items() if all(r.get(k) == v for r in recs)}
