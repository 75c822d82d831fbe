"""The curious server: wraps any strategy, turns chosen replies into attack jobs, never waits on them."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from attacks.methods import ATTACKS, method_config
from fl_sim.core.config import RunConfig
from fl_sim.core.errors import error_line
from fl_sim.core.defenses import shared_record
from fl_sim.core.models import Head
from fl_sim.core.priors import resolve_prior
from fl_sim.core.records import AttackResult, ClientUpdate
from fl_sim.core.store import RunStore
from server.adversary import recovered_update
from server.journal import JobJournal
from server.observe import RoundReplies
from server.strategy import RecordingStrategy
from server.worker import AttackJob, AttackOutcome


_STOP = object()
NO_SIGNAL = "no-signal"  # an attack not run: the update carries no information about its user


def no_signal(global_state: dict[str, Any], update: ClientUpdate) -> str | None:
    """Why an update carries nothing to attack (None if it does): see ``ClientUpdate.no_signal``."""
    return update.no_signal(global_state)


@dataclass(frozen=True)
class DrainStatus:
    """Where the attack queue stands: jobs (one per attacked round) and attacks (targets x methods) of the
    whole run, submitted and done (finished, failed or marked unfinished). ``draining``: the federation is
    over and the dispatcher waits for the rest; ``over``: the drain has ended (nothing left pending)."""

    jobs_done: int
    jobs_total: int
    attacks_done: int
    attacks_total: int
    draining: bool = False
    over: bool = False
    job_seconds: float | None = None  # mean time the worker took per finished job (None before the first)
    since_last: float = 0.0  # seconds since the last job finished (or the first was submitted)

    @property
    def pending_jobs(self) -> int:
        return self.jobs_total - self.jobs_done

    @property
    def eta(self) -> float | None:
        """Seconds until the queue is empty, if the jobs keep their pace (the worker runs one at a time)."""
        if self.job_seconds is None:
            return None
        return max(0.0, self.pending_jobs * self.job_seconds - self.since_last)


@dataclass
class _Pending:
    future: Any
    job: AttackJob
    attack_ids: dict[tuple[str | None, str], int]
    submitted: float = field(default_factory=time.time)
    started: bool = False
    journal: Path | None = None  # the job's file in the journal, removed once its results are stored


class AttackDispatcher:
    """Bounded queue of attack jobs on a worker; results are written to the store as they come.

    ``observe_round`` only hands the round's replies to a pump thread (which writes the queued
    rows, submits the job and collects results), so the server's round is not held up by attack
    bookkeeping; the store must be a connection opened with ``threads=True``. The worker, not the
    server, turns the replies' arrays into observations. ``submit``/``collect``/``drain`` can also
    be called directly (tests do), from one thread while no pump runs.
    """

    def __init__(self, cfg: RunConfig, heads: list[Head], users: list[str], run_dir: Path, store: RunStore,
                 worker: Any, defenses: dict[str, dict[str, Any]] | None = None) -> None:
        """``defenses``: each user's, recorded with every attack on them (an aggregate's: the users' common ones)."""
        self.cfg, self.heads, self.users, self.run_dir, self.store = cfg, heads, users, run_dir, store
        self.worker = worker
        self.defenses = defenses or {}
        self.pending: list[_Pending] = []
        self._next_id = 0
        self._worker_pid: int | None = None  # the worker process jobs go to (``note_worker``)
        self._thread: threading.Thread | None = None
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._cond = threading.Condition()
        self._in_flight = 0  # rounds handed over and not yet finished (the queue's occupancy)
        self._error: BaseException | None = None
        # Counters for progress (read by any thread; only written by the one that submits/collects).
        self.jobs_total = self.jobs_done = self.attacks_total = self.attacks_done = 0
        self._draining = False
        self._busy, self._timed = 0.0, 0  # the worker's seconds on finished jobs, and how many
        self._last_done: float | None = None
        self._watchers: list[Callable[[DrainStatus], None]] = []
        self.journal = JobJournal(run_dir)

    # -- progress --------------------------------------------------------------------------
    def status(self, over: bool = False) -> DrainStatus:
        """The queue's counts now."""
        ran = self._timed
        since = self._last_done if self._last_done is not None else (self.pending[0].submitted if self.pending else None)
        return DrainStatus(self.jobs_done, self.jobs_total, self.attacks_done, self.attacks_total,
                           draining=self._draining, over=over,
                           job_seconds=self._busy / ran if ran and self._busy > 0 else None,
                           since_last=time.time() - since if since is not None else 0.0)

    def watch(self, listener: Callable[[DrainStatus], None]) -> None:
        """Call ``listener`` with the counts whenever a job finishes, and at the drain's start and end
        (a listener that raises is dropped: progress never fails a run)."""
        self._watchers.append(listener)

    def _notify(self, over: bool = False) -> None:
        st = self.status(over)
        for w in list(self._watchers):
            try:
                w(st)
            except Exception:  # noqa: BLE001 - a display problem must not lose the run's attacks
                self._watchers.remove(w)

    # -- background pump -------------------------------------------------------------------
    def start(self) -> None:
        """Run the bookkeeping on a pump thread from now on."""
        self._thread = threading.Thread(target=self._pump, name="attack-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the pump without draining (the run failed); idempotent."""
        if self._thread is not None:
            self._inbox.put(_STOP)
            self._thread.join(timeout=30)
            self._thread = None

    def _pump(self) -> None:
        try:
            while True:
                try:
                    item = self._inbox.get(timeout=0.5)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    return
                if item is not None:
                    rnd, global_state, replies, aggregate_size, dropped, notes, methods, path = item
                    if not self._dispatch(rnd, global_state, replies, aggregate_size, dropped, notes,
                                          methods, path) and not dropped:
                        self._release(1)  # nothing to attack in this round after all
                self._release(self.collect(0.0))
        except BaseException as exc:  # noqa: BLE001 - surfaced by drain(); the federation must not hang
            self._error = exc
            self._release(10 ** 6)

    def _release(self, n: int) -> None:
        if n:
            with self._cond:
                self._in_flight = max(0, self._in_flight - n)
                self._cond.notify_all()

    def observe_round(self, rnd: int, global_state: dict[str, Any], replies: list[ClientUpdate],
                      aggregate_size: int = 1, notes: dict[str, Any] | None = None,
                      methods: list[str] | None = None, journal: Path | None = None) -> None:
        """Hand this round's replies to the pump (started on first use). Blocks only when the queue
        is full and ``when_full`` is ``wait``; with ``drop`` the round's attacks are recorded dropped.

        ``notes``: updates a malicious server's tactic recovered (every one attacked, in any round, whatever
        ``attack.rounds``/``attack.users`` say: the tactic chose them), and what each attack records about that;
        ``methods``: the tactic's own (e.g. ``imprint``, a read-out run by the worker), else ``attack.methods``.
        What it was handed is kept in the journal before this returns (``journal``: the file it already has, when a
        resumed run queues it again), so a kill after the round's end loses no attack of it."""
        if notes is None and not self.cfg.attacked_round(rnd):
            return
        if journal is None:
            journal = self.journal.add(rnd, (rnd, global_state, replies, aggregate_size, notes, methods))
        if self._thread is None:
            self.start()
        a = self.cfg.attack
        with self._cond:
            while self._in_flight >= a.queue_size and a.when_full == "wait" and self._error is None:
                self._cond.wait(0.5)
            dropped = self._in_flight >= a.queue_size
            if not dropped:
                self._in_flight += 1
        self._inbox.put((rnd, global_state, replies, aggregate_size, dropped, notes, methods, journal))

    def requeue(self, after_round: int) -> None:
        """A resumed run: queue again every job of rounds up to ``after_round`` that the kill left unfinished (its
        attack rows, never finished, are replaced); a job whose results were all stored is only forgotten."""
        for path, entry in self.journal.leftovers(after_round):
            ids = entry["ids"] or []
            if ids and self.store.attacks_final(ids):
                self.journal.done(path)
                continue
            self.store.delete_attacks(ids)
            self.observe_round(*entry["item"], journal=path)

    # -- the work --------------------------------------------------------------------------
    def _dispatch(self, rnd: int, global_state: dict[str, Any], replies: list[ClientUpdate],
                  aggregate_size: int, dropped: bool, notes: dict[str, Any] | None = None,
                  methods: list[str] | None = None, journal: Path | None = None) -> bool:
        """Make the round's job and submit it (or record it dropped); False if nobody was chosen."""
        a = self.cfg.attack
        run_methods = list(methods) if methods else list(a.methods)
        chosen = set(self.cfg.attacked_users(self.users)) if aggregate_size == 1 and notes is None else None
        picked = [u for u in replies if chosen is None or u.user in chosen]
        # A tactic's recovered update: the layers other users still mix into are not the target's (never read).
        unknown = tuple(str(k) for k in (notes or {}).get("inexact_layers", ()))
        known = {k: v for k, v in global_state.items() if k not in unknown}
        # An update that carries nothing is recorded as such, never attacked and scored as if it did.
        silent = [(u, why) for u in picked if (why := no_signal(known, u)) is not None]
        if silent:
            self.store.add_attacks([{"rnd": rnd, "user": u.user if aggregate_size == 1 else None, "method": meth,
                                     "status": NO_SIGNAL, "aggregate_size": aggregate_size,
                                     "defenses": self._defenses_of(u.user if aggregate_size == 1 else None),
                                     "error": why, "metrics": dict(notes or {})}
                                    for u, why in silent for meth in run_methods])
            picked = [u for u in picked if all(u is not s[0] for s in silent)]
        if not picked:
            self.journal.done(journal)
            return False
        targets = [u.user if aggregate_size == 1 else None for u in picked]
        # Plain arrays only: the worker builds the observations (the server's round does not wait on that).
        obs = RoundReplies(self.cfg, self.heads, rnd, global_state, picked, targets, aggregate_size, unknown)
        keys = [(t, m) for t in targets for m in run_methods]
        ids = dict(zip(keys, self.store.add_attacks([{"rnd": rnd, "user": t, "method": m, "status": "queued",
                                                      "aggregate_size": aggregate_size,
                                                      "defenses": self._defenses_of(t)} for t, m in keys])))
        if dropped:
            for aid in ids.values():
                self.store.update_attack(aid, status="dropped", error="attack queue full", commit=False)
            self.store.commit()
            self.journal.done(journal)
            return True
        if journal is not None:
            self.journal.dispatched(journal, list(ids.values()))
        self._next_id += 1
        job = AttackJob(job_id=self._next_id, round=rnd, observations=obs, targets=targets, methods=run_methods,
                        attack_configs={m: method_config(m, self.cfg.data.image_size, seed=self.cfg.seed,
                                                         **({"iterations": a.iterations} if a.iterations else {}))
                                        for m in run_methods if m in ATTACKS},
                        prior=resolve_prior(a.prior, self.cfg.data.image_size),
                        dataset=self.cfg.data.dataset, image_size=self.cfg.data.image_size,
                        photos_per_user=self.cfg.data.photos_per_user, run_users=list(self.users),
                        run_dir=str(self.run_dir), notes=dict(notes or {}))
        self.submit(job, ids, journal)
        return True

    def _defenses_of(self, user: str | None) -> dict[str, Any]:
        if user is not None:
            return self.defenses.get(user, {})
        # An aggregate: the defenses every user shares (SecAgg+ is federation-wide).
        return shared_record(self.defenses)

    def _wait_until_alive(self, timeout: float = 60.0) -> dict[str, Any]:
        """A job sent while Ray restarts the worker would fail unrun: wait for the worker first; returns where
        the restarted worker runs."""
        import ray

        deadline = time.time() + timeout
        while True:
            try:
                where: dict[str, Any] = ray.get(self.worker.where.remote(), timeout=timeout)
                return where
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def note_worker(self, where: dict[str, Any]) -> None:
        """Record where the worker runs (``AttackWorker.where``): at its start, and after each restart."""
        self._worker_pid = where.get("pid")
        self.store.add_worker(where)

    def submit(self, job: AttackJob, ids: dict[tuple[str | None, str], int], journal: Path | None = None) -> None:
        """Send a job (its attacks stay 'queued' in the store until the worker's result arrives).

        The worker is probed first (its own thread answers while a job runs; a few ms, on the pump thread): a job
        sent while Ray restarts a dead worker would fail unrun, before the death of the one in flight is even seen.
        A worker with a new pid was restarted, and is recorded again."""
        where = self._wait_until_alive()
        if where.get("pid") != self._worker_pid:
            self.note_worker(where)
        self.pending.append(_Pending(self.worker.run_job.remote(job), job, ids, journal=journal))
        self.jobs_total += 1
        self.attacks_total += len(ids)
        self._mark_head_running()

    def _mark_head_running(self) -> None:
        """The worker runs jobs in submission order: the oldest pending one is the one running."""
        if self.pending and not self.pending[0].started:
            self.pending[0].started = True
            self.store.mark_running(list(self.pending[0].attack_ids.values()))

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
                results = outcome.results
            except Exception as exc:  # noqa: BLE001 - the worker died (or was restarting) mid-job: Ray restarts it
                err = error_line(exc)  # the original exception's one line, Ray's wrapper and colours removed
                results = [AttackResult(t, m, "failed", error=f"attack worker died mid-job: {err}")
                           for (t, m) in p.attack_ids]
            finished.append(p)
            for res in results:
                self.store.record_attack(p.attack_ids[(res.target, res.method)], res, commit=False)
            self.store.commit()  # one commit per job
            self.journal.done(p.journal)
        self.pending = [p for p in self.pending if p not in finished]
        self._mark_head_running()
        if finished:
            now = time.time()
            for p in finished:  # one worker, jobs in submission order: each ran from the later of its
                start = max(p.submitted, self._last_done or p.submitted)  # submission and the previous end
                self._busy += max(0.0, now - start)
                self._last_done = now
            self._timed += len(finished)
            self.jobs_done += len(finished)
            self.attacks_done += sum(len(p.attack_ids) for p in finished)
            self._notify()
        return len(finished)

    def drain(self, timeout: float) -> None:
        """Wait for the queue (up to ``timeout``); whatever is left is marked unfinished."""
        deadline = time.time() + timeout
        if self._thread is not None:
            self._inbox.put(_STOP)  # the pump submits what it was handed, then stops
            self._thread.join()
            self._thread = None
            if self._error is not None:
                raise RuntimeError(f"attack dispatcher failed: {self._error}") from self._error
        self._draining = True
        self._notify()
        while self.pending and time.time() < deadline:
            self.collect(min(5.0, max(0.0, deadline - time.time())))
        for p in self.pending:
            for aid in p.attack_ids.values():
                self.store.update_attack(aid, status="unfinished", error=f"not done after the {timeout:.0f}s drain")
            self.journal.done(p.journal)
            self.jobs_done += 1
            self.attacks_done += len(p.attack_ids)
        self.pending = []
        self._notify(over=True)


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
        # User order, not arrival order (the base reads them in that order): a batched attack draws its
        # noise per batch position, so the same user must sit at the same position for the same seed to
        # give the same reconstruction.
        ok = list(self._updates)
        recovered = self.adversary.recovered(server_round) if self.adversary is not None else []
        if self.adversary is not None and self.adversary.sent_in(server_round):
            # A crafted round: the attacks run on what the tactic recovered from the aggregate (with the weights it
            # names), never on the individual replies (their users trained on crafted models).
            reply_of = {u.user: u for u in ok}
            for rec in recovered:
                reply = reply_of.get(rec.user)
                update = recovered_update(rec, reply, server_round, self.dispatcher.cfg)
                notes = self.adversary.notes(rec)
                if reply is not None and reply.refused:  # model_check refused: the target sent back no update
                    notes["target_refused"] = True
                self.dispatcher.observe_round(server_round, rec.weights, [update], notes=notes,
                                              methods=self.adversary.methods())
            return result
        self.dispatcher.observe_round(server_round, self._global, ok)
        return result

