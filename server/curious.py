"""The curious server: wraps any strategy, turns chosen replies into attack jobs, never waits on them."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from attacks.methods import AttackConfig
from fl_sim.config import RunConfig
from fl_sim.models import Head
from fl_sim.store import RunStore
from server.observe import build_observation
from server.strategy import RecordingStrategy
from server.worker import AttackJob, AttackOutcome


@dataclass
class _Pending:
    future: Any
    job: AttackJob
    attack_ids: dict[tuple[str | None, str], int]
    submitted: float = field(default_factory=time.time)


class AttackDispatcher:
    """Bounded queue of attack jobs on a worker; results are written to the store as they come."""

    def __init__(self, cfg: RunConfig, heads: list[Head], users: list[str], run_dir: Path, store: RunStore,
                 worker: Any) -> None:
        self.cfg, self.heads, self.users, self.run_dir, self.store = cfg, heads, users, run_dir, store
        self.worker = worker
        self.pending: list[_Pending] = []
        self._next_id = 0

    def observe_round(self, rnd: int, global_state: dict[str, Any], replies: list[tuple[str | None, Message]],
                      aggregate_size: int = 1) -> None:
        """Queue one job for this round's chosen replies (does not block unless the queue is full)."""
        a = self.cfg.attack
        if not self.cfg.attacked_round(rnd):
            return
        chosen = set(self.cfg.attacked_users(self.users)) if aggregate_size == 1 else None
        obs, targets = [], []
        for user, msg in replies:
            if chosen is not None and user not in chosen:
                continue
            client_state = {k: v.numpy() for k, v in msg.content["arrays"].items()}
            obs.append(build_observation(self.cfg, self.heads, global_state, client_state,
                                         dict(msg.content["metrics"]), rnd=rnd, user=user,
                                         aggregate_size=aggregate_size))
            targets.append(user if aggregate_size == 1 else None)
        if not obs:
            return
        ids = {(t, m): self.store.add_attack(rnd=rnd, user=t, method=m, status="queued", aggregate_size=aggregate_size)
               for t in targets for m in a.methods}
        self._next_id += 1
        job = AttackJob(job_id=self._next_id, round=rnd, observations=obs, targets=targets, methods=list(a.methods),
                        attack_config=AttackConfig(iterations=a.iterations, seed=self.cfg.seed), prior=a.prior,
                        dataset=self.cfg.data.dataset, image_size=self.cfg.data.image_size,
                        photos_per_user=self.cfg.data.photos_per_user, run_users=list(self.users),
                        run_dir=str(self.run_dir))
        self.collect(0.0)
        while len(self.pending) >= a.queue_size:
            if a.when_full == "drop":
                for aid in ids.values():
                    self.store.update_attack(aid, status="dropped", error="attack queue full")
                return
            self.collect(1.0)
        self.submit(job, ids)

    def _wait_until_alive(self, timeout: float = 60.0) -> None:
        """A job sent while Ray restarts the worker would fail unrun: wait for the worker first."""
        import ray

        deadline = time.time() + timeout
        while True:
            try:
                ray.get(self.worker.pid.remote(), timeout=timeout)
                return
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def submit(self, job: AttackJob, ids: dict[tuple[str | None, str], int]) -> None:
        self._wait_until_alive()
        for aid in ids.values():
            self.store.update_attack(aid, status="running")
        self.pending.append(_Pending(self.worker.run_job.remote(job), job, ids))

    def collect(self, timeout: float) -> int:
        """Write every finished job's results; returns how many finished."""
        import ray

        if not self.pending:
            return 0
        done, _ = ray.wait([p.future for p in self.pending], num_returns=len(self.pending), timeout=timeout)
        finished = []
        for p in [p for p in self.pending if p.future in done]:
            try:
                outcome: AttackOutcome = ray.get(p.future)
                rows = outcome.results
            except Exception as exc:  # noqa: BLE001 - the worker died (or was restarting) mid-job: Ray restarts it
                err = f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                rows = [{"target": t, "method": m, "status": "failed", "error": f"attack worker died mid-job: {err}"}
                        for (t, m) in p.attack_ids]
            finished.append(p)
            for row in rows:
                aid = p.attack_ids[(row["target"], row["method"])]
                self.store.update_attack(aid, status=row["status"], metrics=row.get("metrics"), image=row.get("image"),
                                         error=row.get("error"))
        self.pending = [p for p in self.pending if p not in finished]
        return len(finished)

    def drain(self, timeout: float) -> None:
        """Wait for the queue (up to ``timeout``); whatever is left is marked unfinished."""
        deadline = time.time() + timeout
        while self.pending and time.time() < deadline:
            self.collect(min(5.0, max(0.0, deadline - time.time())))
        for p in self.pending:
            for aid in p.attack_ids.values():
                self.store.update_attack(aid, status="unfinished", error=f"not done after the {timeout:.0f}s drain")
        self.pending = []


class CuriousStrategy(RecordingStrategy):
    """An honest-but-curious server around any strategy: records every reply (as its base does)
    and hands the chosen ones to the attack worker, changing nothing clients or aggregation see.
    """

    def __init__(self, inner: Strategy, *, dispatcher: AttackDispatcher, **kwargs: Any) -> None:
        super().__init__(inner, **kwargs)
        self.dispatcher = dispatcher

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        result = super().aggregate_train(server_round, replies)
        ok = [(self.user_of_node.get(m.metadata.src_node_id), m) for m in replies if not m.has_error()]
        self.dispatcher.observe_round(server_round, self._global, ok)
        return result

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        self.dispatcher.collect(0.0)
        return super().aggregate_evaluate(server_round, replies)
