"""The attack worker: a Ray actor that runs attacks on observations, then scores them apart.

Separation of knowledge by construction: `run_job` calls the attack with observations only;
the users' photos are loaded afterwards, inside `_score`, from the dataset spec — the attack
call never holds a handle to them.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch

from attacks.methods import AttackConfig, run_attack
from attacks.observation import Observation
from fl_sim.core.errors import error_line
from fl_sim.core.records import AttackResult
from server.observe import RoundReplies


@dataclass
class AttackJob:
    """One batch of observations (one round) and the methods to run on them."""

    job_id: int
    round: int
    observations: list[Observation] | RoundReplies  # RoundReplies: built into observations by the worker
    targets: list[str | None]  # user per observation; None for an aggregate
    methods: list[str]
    attack_configs: dict[str, AttackConfig]  # per method
    prior: str
    # For the scorer only: where the truth lives. Never passed to the attack.
    dataset: str
    image_size: int
    photos_per_user: int
    run_users: list[str]  # re-identification ranks among all of them
    run_dir: str
    fail_with: str | None = None  # test hook: raise this inside the job


@dataclass
class AttackOutcome:
    """What a job produced, per (target, method): metrics and an image path, or an error."""

    job_id: int
    round: int
    results: list[AttackResult] = field(default_factory=list)
    error: str | None = None


class AttackWorker:
    """Runs jobs; CPU workers lower their own priority so the federation's clients come first."""

    def __init__(self, low_priority: bool = True) -> None:
        self._low = low_priority and not torch.cuda.is_available()
        self._lower_priority()
        torch.set_num_threads(1)
        self._priors: dict[str, Any] = {}
        self._truth: dict[tuple[Any, ...], Any] = {}

    def warm_up(self, prior: str | None) -> int:
        """Load what every job needs (the prior, the face evaluators) before the federation starts,
        so that cost lands in start-up, not in the first attacked rounds."""
        from fl_sim.core.evaluators.face import age_gender, identity_embedder
        from fl_sim.core.scoring import EVALUATORS

        torch.set_num_threads(1)
        self._lower_priority()
        if prior:
            self._prior(prior)
        for name in EVALUATORS:
            identity_embedder(name)
        age_gender()
        return os.getpid()

    def _lower_priority(self) -> None:
        """On a CPU host, every thread of this process yields to the federation: SCHED_IDLE
        (or nice 19 where that is refused). Linux applies both per thread, and Ray runs actor
        methods on threads of its own; Ray also starts its workers — the clients too — at nice 15,
        so nice 19 alone would still take about 30 % of a contended core from a client."""
        if not self._low:
            return
        tids = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
        for tid in tids:
            try:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            except (AttributeError, OSError):
                try:
                    os.setpriority(os.PRIO_PROCESS, tid, 19)
                except OSError:
                    pass

    @ray.method(concurrency_group="probe")
    def pid(self) -> int:
        """Liveness probe; its own concurrency group, so it answers while a job runs."""
        return os.getpid()

    def _prior(self, spec: str) -> Any:
        from fl_sim.core.priors import open_prior

        if spec not in self._priors:
            self._priors[spec] = open_prior(spec)
        return self._priors[spec]

    def run_job(self, job: AttackJob) -> AttackOutcome:
        # Ray runs actor methods on its own thread; OpenMP's thread count is per thread, so pin
        # it here too: one thread, one summation order, the same reconstructions run after run.
        torch.set_num_threads(1)
        self._lower_priority()
        out = AttackOutcome(job.job_id, job.round)
        try:
            if job.fail_with:
                raise RuntimeError(job.fail_with)
            prior = self._prior(job.prior) if "diffusion" in job.methods else None
            obs = job.observations.observations() if isinstance(job.observations, RoundReplies) else job.observations
            recs: dict[str, list[Any]] = {}
            for method in job.methods:
                recs[method] = run_attack(method, obs, prior, job.attack_configs[method])
            out.results = self._score(job, recs)
        except Exception as exc:  # noqa: BLE001 - recorded as the job's failure, with its error
            out.error = error_line(exc)
            trace = traceback.format_exc(limit=3)
            out.results = [AttackResult(t, m, "failed", error=out.error, trace=trace)
                           for t in job.targets for m in job.methods]
        return out

    def _score(self, job: AttackJob, recs: dict[str, list[Any]]) -> list[AttackResult]:
        """The only place ground truth is touched: loaded here, after the attacks returned."""
        from PIL import Image

        from fl_sim.core.data import open_dataset
        from fl_sim.core.evaluators.face import to_uint8_hwc
        from fl_sim.core.scoring import UserTruth, score

        key = (job.dataset, job.image_size, job.photos_per_user, tuple(job.run_users))
        if key not in self._truth:
            ds = open_dataset(job.dataset)
            attrs = {r.user: r.attributes for r in ds.users() if r.user in job.run_users}
            photos = {u: ds.photos(u, job.image_size)[:job.photos_per_user] for u in job.run_users}
            self._truth[key] = UserTruth(list(job.run_users), photos, attrs)
        truth = self._truth[key]
        img_dir = Path(job.run_dir) / "attacks"
        img_dir.mkdir(parents=True, exist_ok=True)
        rows: list[AttackResult] = []
        for method, rs in recs.items():
            images = torch.stack([r.image for r in rs])
            scores = score(images, job.targets, truth)
            for t, r, s in zip(job.targets, rs, scores):
                name = f"r{job.round:03d}_{t or 'aggregate'}_{method}.png"
                # Native size, no frame: panels upscale on display; scores come from the tensor itself.
                Image.fromarray(to_uint8_hwc(r.image[None])[0]).save(img_dir / name)
                rows.append(AttackResult(t, method, "finished", image=f"attacks/{name}",
                                         metrics={**s, "labels": r.labels, "seconds": r.seconds,
                                                  "final_loss": r.final_loss}))
        return rows


def make_remote_worker(num_cpus: float, num_gpus: float) -> Any:
    """The worker as a Ray actor; Ray restarts it if its process dies (the job in flight fails)."""
    import ray

    # Jobs run one at a time (the default group); the probe gets its own thread, or a liveness
    # check would queue behind the job in flight and stall the round that submits the next one.
    actor = ray.remote(max_restarts=-1, max_task_retries=0, concurrency_groups={"probe": 1})(AttackWorker)
    return actor.options(num_cpus=num_cpus, num_gpus=num_gpus).remote(low_priority=num_gpus == 0)
