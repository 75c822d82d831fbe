"""Server strategies: seeded client sampling, and a wrapper that records every reply before aggregation."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from fl_sim.core.errors import reason_line
from fl_sim.core.flwr_records import read_evaluation, read_update
from fl_sim.core.records import ClientUpdate
from server.adversary import Adversary

State = dict[str, np.ndarray]
# A malicious server's crafting: (round, global model, the round's users) -> what each user gets (None: honest).
Craft = Callable[[int, State, list[str]], "dict[str, State] | None"]
# (round, user) -> the model variant that user is told to build ("": the shared model).
Variant = Callable[[int, str], str]
VARIANT = "model-variant"  # the train config's key naming the variant (fl_sim.core.models.with_variant)


# Flower's error codes for a reply that never came because its node went away (SuperNode killed,
# connection lost): the user drops out of the round. Any other error is the ClientApp's own.
NODE_GONE = frozenset({ErrorCode.NODE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE})


class SeededFedAvg(FedAvg):
    """FedAvg whose per-round client sample is a function of (seed, round) over users, not node ids.

    Flower's own sampler draws from random node ids, so two runs with one seed would train
    different users; sampling users by name keeps runs repeatable.
    """

    def __init__(self, *, node_of_user: dict[str, int], sample: Callable[[list[str], int], list[str]],
                 craft: Craft | None = None, variant: Variant | None = None, **kwargs: Any) -> None:
        """``craft``: a malicious server's per-user parameters (``server.adversary.Adversary.craft``); ``variant``:
        the architecture each user is told to build for them (``Adversary.variant``)."""
        super().__init__(**kwargs)
        self.node_of_user = node_of_user
        self.sample = sample
        self.craft = craft
        self.variant = variant

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config["server-round"] = server_round
        users = self.sample(list(self.node_of_user), server_round)
        crafted = self.craft(server_round, {k: v.numpy() for k, v in arrays.items()}, users) if self.craft else None
        if not crafted:
            record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
            return self._construct_messages(record, [self.node_of_user[u] for u in users], MessageType.TRAIN)
        # A crafted round: each node gets its own parameters (one record per distinct state and variant); a
        # variant's spec travels in the train config, so the honest client builds the architecture the arrays fit.
        records: dict[tuple[int, str], RecordDict] = {}
        messages: list[Message] = []
        for u in users:
            state = crafted[u]
            variant = self.variant(server_round, u) if self.variant is not None else ""
            if (id(state), variant) not in records:
                own = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})
                conf = config
                if variant:
                    conf = ConfigRecord(dict(config))
                    conf[VARIANT] = variant
                records[(id(state), variant)] = RecordDict({self.arrayrecord_key: own, self.configrecord_key: conf})
            messages += self._construct_messages(records[(id(state), variant)], [self.node_of_user[u]],
                                                 MessageType.TRAIN)
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.fraction_evaluate == 0.0:
            return []  # utility is measured by the simulation harness instead
        # Utility is every user's held-out accuracy, so evaluation asks all of them.
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, [self.node_of_user[u] for u in sorted(self.node_of_user)],
                                        MessageType.EVALUATE)


def update_norms(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> tuple[float, dict[str, float]]:
    """L2 norm of (before - after), overall and per layer."""
    per = {k: float(np.linalg.norm((before[k] - after[k]).ravel())) for k in before}
    return float(np.sqrt(sum(v * v for v in per.values()))), per


class RecordingStrategy(Strategy):
    """Wraps any strategy; records each client reply and each round's utility, changes nothing.

    ``on_update(node_id, global_arrays, update)`` (each reply, read once into a ``ClientUpdate``) and
    ``on_round(round, record)`` are the hooks the run store (and the curious server) attach to.
    """

    def __init__(self, inner: Strategy, *, user_of_node: dict[int, str],
                 on_update: Callable[[int, dict[str, np.ndarray], ClientUpdate], None],
                 on_round: Callable[[int, dict[str, Any]], None],
                 defenses: Mapping[str, Mapping[str, Any]] | None = None, adversary: Adversary | None = None) -> None:
        """``defenses``: each user's defense record (the names go into their updates). ``adversary``: a malicious
        server's (its crafted rounds: updates against what each user got, the next model repaired)."""
        self.inner = inner
        self.adversary = adversary
        self.user_of_node = user_of_node
        self.on_update = on_update
        self.on_round = on_round
        self.defenses = defenses or {}
        self._updates: list[ClientUpdate] = []  # this round's replies, in user order
        self._global: dict[str, np.ndarray] = {}
        self._round_start = 0.0
        self._train_metrics: dict[str, Any] = {}
        self._n_clients = 0
        self._failed: dict[str, str] = {}  # this round's users whose node went away, and why
        self._sent: list[Message] = []  # this round's train instructions
        self._eval: dict[str, Any] = {"metrics": {}, "per_user_accuracy": {}}

    def __getattr__(self, name: str) -> Any:
        # Anything the wrapper does not define (weighted_by_key, ...) is the inner strategy's.
        return getattr(self.__dict__["inner"], name)

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._round_start = time.time()
        self._global = {k: v.numpy() for k, v in arrays.items()}
        self._sent = list(self.inner.configure_train(server_round, arrays, config, grid))
        return self._sent

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        failed = [m for m in replies if m.has_error()]
        crashed = [m for m in failed if m.error.code not in NODE_GONE]
        if crashed:
            # A client that crashes is a bug in the experiment, not a straggler: stop the run loudly.
            m = crashed[0]
            user = self.user_of_node.get(m.metadata.src_node_id, m.metadata.src_node_id)
            raise RuntimeError(f"client of user {user} failed in round {server_round}: "
                               f"{reason_line(m.error.reason or '')}")
        # A node that went away (a killed SuperNode, a lost connection) is Flower's failure: the round goes on
        # without that user, who is recorded as failed in it; the run goes on too.
        # An error reply made by the SuperLink comes from the SuperLink's node, so the user is the one whose
        # instruction it answers (the grid gave each sent message its id when it pushed it).
        dst = {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent}
        self._failed = {str(self.user_of_node.get(dst.get(m.metadata.reply_to_message_id, m.metadata.src_node_id),
                                                  m.metadata.src_node_id)):
                        reason_line(m.error.reason or "") or f"error code {m.error.code}" for m in failed}
        replies = [m for m in replies if not m.has_error()]
        # Replies arrive in whatever order the actors finish; summing them in user order makes the
        # aggregate bit-for-bit the same from run to run (float addition is not associative).
        replies.sort(key=lambda m: str(self.user_of_node.get(m.metadata.src_node_id, m.metadata.src_node_id)))
        self._updates = []
        sent = self.adversary.sent_in(server_round) if self.adversary is not None else {}
        for msg in replies:
            node = msg.metadata.src_node_id
            user = self.user_of_node.get(node)
            update = read_update(msg.content, user=user, round=server_round,
                                 defenses=tuple(self.defenses.get(user or "", {})))
            self._updates.append(update)
            # An update is against what that user was sent (a crafted round's own model), not the global one.
            self.on_update(node, sent.get(user or "", self._global), update)
        if sent:
            # A variant's own arrays (an imprint block) never reach FedAvg: only the shared model's keys are averaged.
            for msg in replies:
                for rec in msg.content.array_records.values():
                    for k in [k for k in rec if k not in self._global]:
                        del rec[k]
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if sent and arrays is not None and self.adversary is not None:
            # The aggregate (what SecAgg+ would give) and what was sent reach the tactic; so do the individual replies
            # the server holds on this path (a tactic that claims to defeat secure aggregation must not read them).
            examples = {str(u.user): u.num_examples for u in self._updates}
            nxt = self.adversary.close_round(server_round, self._global, examples,
                                             {k: v.numpy() for k, v in arrays.items()},
                                             replies={str(u.user): u.arrays for u in self._updates})
            arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in nxt.items()})
        self._train_metrics = dict(metrics) if metrics is not None else {}
        self._n_clients = len(replies)
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        metrics = self.inner.aggregate_evaluate(server_round, replies)
        per_user = {}
        for msg in replies:
            if not msg.has_error():
                m = read_evaluation(msg.content)
                per_user[self.user_of_node.get(msg.metadata.src_node_id, str(msg.metadata.src_node_id))] = m.get("accuracy")
        self._eval = {"metrics": dict(metrics) if metrics is not None else {}, "per_user_accuracy": per_user}
        return metrics

    def finish_round(self, server_round: int, utility: dict[str, Any] | None = None) -> None:
        """Close a round (called from the strategy's evaluate_fn, after all its phases):
        ``utility`` from the harness, or the federated evaluation just aggregated."""
        ev = utility if utility is not None else self._eval
        rec = {"started": self._round_start, "seconds": time.time() - self._round_start,
               "n_clients": self._n_clients, "train": self._train_metrics,
               "evaluate": ev["metrics"], "per_user_accuracy": ev["per_user_accuracy"], "failed": dict(self._failed)}
        if self.adversary is not None and (note := self.adversary.note(server_round)) is not None:
            rec["adversary"] = note
        self.on_round(server_round, rec)
        self._failed = {}


class OffsetRounds(Strategy):
    """``inner`` with its rounds numbered from ``offset + 1``: a resumed run goes on at the round after its last
    finished one, so sampling, local seeds, attacked rounds and the store see an uninterrupted run's numbers."""

    def __init__(self, inner: Strategy, offset: int) -> None:
        self.inner, self.offset = inner, offset

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round + self.offset, replies)
