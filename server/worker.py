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

import torch

from attacks.methods import AttackConfig, run_attack
from attacks.observation import Observation


@dataclass
class AttackJob:
    """One batch of observations (one round) and the methods to run on them."""

    job_id: int
    round: int
    observations: list[Observation]
    targets: list[str | None]  # user per observation; None for an aggregate
    methods: list[str]
    attack_config: AttackConfig
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
    results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


class AttackWorker:
    """Runs jobs; CPU workers lower their own priority so the federation's clients come first."""

    def __init__(self, low_priority: bool = True) -> None:
        if low_priority and not torch.cuda.is_available():
            try:
                os.nice(19)
            except OSError:
                pass
        torch.set_num_threads(1)
        self._priors: dict[str, Any] = {}
        self._truth: dict[tuple[Any, ...], Any] = {}

    def pid(self) -> int:
        return os.getpid()

    def _prior(self, spec: str) -> Any:
        from attacks.priors import load_prior

        if spec not in self._priors:
            self._priors[spec] = load_prior(spec)
        return self._priors[spec]

    def run_job(self, job: AttackJob) -> AttackOutcome:
        out = AttackOutcome(job.job_id, job.round)
        try:
            if job.fail_with:
                raise RuntimeError(job.fail_with)
            prior = self._prior(job.prior) if "diffusion" in job.methods else None
            recs: dict[str, list[Any]] = {}
            for method in job.methods:
                recs[method] = run_attack(method, job.observations, prior, job.attack_config)
            out.results = self._score(job, recs)
        except Exception as exc:  # noqa: BLE001 - recorded as the job's failure, with its error
            out.error = f"{exc.__class__.__name__}: {exc}"
            out.results = [{"target": t, "method": m, "status": "failed", "error": out.error,
                            "trace": traceback.format_exc(limit=3)} for t in job.targets for m in job.methods]
        return out

    def _score(self, job: AttackJob, recs: dict[str, list[Any]]) -> list[dict[str, Any]]:
        """The only place ground truth is touched: loaded here, after the attacks returned."""
        from fl_sim.data import open_dataset
        from fl_sim.prior_train import save_grid
        from fl_sim.scoring import UserTruth, score

        key = (job.dataset, job.image_size, job.photos_per_user, tuple(job.run_users))
        if key not in self._truth:
            ds = open_dataset(job.dataset)
            attrs = {r.user: r.attributes for r in ds.users() if r.user in job.run_users}
            photos = {u: ds.photos(u, job.image_size)[:job.photos_per_user] for u in job.run_users}
            self._truth[key] = UserTruth(list(job.run_users), photos, attrs)
        truth = self._truth[key]
        img_dir = Path(job.run_dir) / "attacks"
        img_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for method, rs in recs.items():
            images = torch.stack([r.image for r in rs])
            scores = score(images, job.targets, truth)
            for t, r, s in zip(job.targets, rs, scores):
                name = f"r{job.round:03d}_{t or 'aggregate'}_{method}.png"
                save_grid(r.image[None], img_dir / name, nrow=1, scale=4)
                rows.append({"target": t, "method": method, "status": "finished", "image": f"attacks/{name}",
                             "metrics": {**s, "labels": r.labels, "seconds": r.seconds, "final_loss": r.final_loss},
                             "error": None})
        return rows


def make_remote_worker(num_cpus: float, num_gpus: float) -> Any:
    """The worker as a Ray actor; Ray restarts it if its process dies (the job in flight fails)."""
    import ray

    actor = ray.remote(max_restarts=-1, max_task_retries=0)(AttackWorker)
    return actor.options(num_cpus=num_cpus, num_gpus=num_gpus).remote(low_priority=num_gpus == 0)
