"""The attack worker: a Ray actor that runs attacks on observations, then scores them apart.

Separation of knowledge by construction: `run_job` calls the attack with observations only;
the users' photos are loaded afterwards, inside `_score`, from the dataset spec — the attack
call never holds a handle to them.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
import torch

from attacks.methods import AttackConfig, run_attack
from attacks.observation import Observation
from fl_sim.core.errors import ConfigError, error_line
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
    notes: dict[str, Any] = field(default_factory=dict)  # recorded with every result's metrics (e.g. source)


IMPRINT = "imprint"  # the tactic imprint's read-out: a worker method, not an inversion (attacks.imprint.recover_bins)


@dataclass
class ImprintRead:
    """One imprint observation's candidates, in bin order (``mixed``: cannot be one photo)."""

    images: torch.Tensor
    bins: list[int]
    mixed: list[bool]
    seconds: float
    cleaned: torch.Tensor | None = None  # the candidates with the mixed ones cleaned by the prior (clean_noise > 0)


def read_imprints(observations: RoundReplies, image_size: int) -> list[ImprintRead]:
    """The candidates of each reply's imprint block: its update read as a gradient (before − after)/lr — FedSGD's exact
    gradient, FedAvg's sum of local steps (attacks.imprint.update_as_gradient). What the server sent and got only."""
    import numpy as np

    from attacks.imprint import recover_bins, update_as_gradient
    from fl_sim.core.adversary.imprint import BIAS, WEIGHT

    out = []
    before = observations.global_state
    for up in observations.updates:
        t0 = time.time()
        grads = [update_as_gradient(torch.as_tensor(np.asarray(before[k])), torch.as_tensor(np.asarray(up.arrays[k])),
                                    up.lr) for k in (WEIGHT, BIAS)]
        rec = recover_bins(grads[0], grads[1], shape=(3, image_size, image_size))
        out.append(ImprintRead(rec.images, rec.bins.tolist(), rec.mixed.tolist(), time.time() - t0))
    return out


def _clean_mixed(reads: list[ImprintRead], prior: Any, noise_std: float, seed: int) -> None:
    """Each read's mixed candidates cleaned by the prior (attacks.imprint.clean_with_prior); the rest as read."""
    from attacks.imprint import clean_with_prior

    for read in reads:
        t0 = time.time()
        cleaned = read.images.clone()
        idx = [i for i, m in enumerate(read.mixed) if m]
        if idx:
            cleaned[idx] = clean_with_prior(read.images[idx], prior, noise_std, seed=seed)
        read.cleaned = cleaned
        read.seconds += time.time() - t0


@dataclass
class AttackOutcome:
    """What a job produced, per (target, method): metrics and an image path, or an error."""

    job_id: int
    round: int
    results: list[AttackResult] = field(default_factory=list)
    error: str | None = None


class AttackWorker:
    """Runs jobs; CPU workers lower their own priority so the federation's clients come first."""

    def __init__(self, low_priority: bool = True, gpus: float = 0.0) -> None:
        self._low = low_priority and not torch.cuda.is_available()
        # On a GPU only when one was asked for (attack.worker_gpus > 0) and this process sees one: with 0 GPUs Ray
        # may still leave the card visible (RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0), and the CPU path is the default.
        self._device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
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

    @ray.method(concurrency_group="probe")
    def where(self) -> dict[str, Any]:
        """Where this worker runs: its process, its Ray node (id and address) and the device its attacks use."""
        ctx = ray.get_runtime_context()
        return {"pid": os.getpid(), "node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                "device": self._device}

    def _prior(self, spec: str) -> Any:
        from fl_sim.core.priors import open_prior

        if spec not in self._priors:
            self._priors[spec] = open_prior(spec, device=self._device)
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
            recs: dict[str, list[Any]] = {}
            if IMPRINT in job.methods:
                if not isinstance(job.observations, RoundReplies):
                    raise ValueError("the imprint read-out needs the replies' arrays (RoundReplies)")
                recs[IMPRINT] = read_imprints(job.observations, job.image_size)
                if job.notes.get("clean_noise"):
                    _clean_mixed(recs[IMPRINT], self._prior(job.prior), float(job.notes["clean_noise"]), job.round)
            others = [m for m in job.methods if m != IMPRINT]
            obs = (job.observations.observations() if isinstance(job.observations, RoundReplies)
                   else job.observations) if others else []
            for method in others:
                cfg = job.attack_configs[method]
                recs[method] = run_attack(method, obs, prior, replace(cfg, device=self._device))
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
        from fl_sim.core.scoring import LazyPhotos, UserTruth, score

        key = (job.dataset, job.image_size, job.photos_per_user, tuple(job.run_users))
        if key not in self._truth:
            # Photos are read per user as needed; what stays is each user's embeddings (re-identification ranks a
            # reconstruction among all of them), so the worker's memory hardly grows with the users that exist.
            run_users = set(job.run_users)
            attrs = {r.user: r.attributes for r in open_dataset(job.dataset).users() if r.user in run_users}
            photos = LazyPhotos(job.dataset, job.image_size, job.photos_per_user, list(job.run_users))
            self._truth[key] = UserTruth(list(job.run_users), photos, attrs)
        truth = self._truth[key]
        img_dir = Path(job.run_dir) / "attacks"
        img_dir.mkdir(parents=True, exist_ok=True)
        rows: list[AttackResult] = []
        for method, rs in recs.items():
            if method == IMPRINT:
                rows += [self._score_imprint(job, t, r, truth, img_dir) for t, r in zip(job.targets, rs)]
                continue
            images = torch.stack([r.image for r in rs])
            scores = score(images, job.targets, truth)
            for t, r, s in zip(job.targets, rs, scores):
                name = f"r{job.round:03d}_{t or 'aggregate'}_{method}.png"
                # Native size, no frame: panels upscale on display; scores come from the tensor itself.
                Image.fromarray(to_uint8_hwc(r.image[None])[0]).save(img_dir / name)
                rows.append(AttackResult(t, method, "finished", image=f"attacks/{name}",
                                         metrics={**s, "labels": r.labels, "seconds": r.seconds,
                                                  "final_loss": r.final_loss, **job.notes}))
        return rows

    def _score_imprint(self, job: AttackJob, target: str | None, read: ImprintRead, truth: Any,
                       img_dir: Path) -> AttackResult:
        """Per photo (each candidate matched to one true photo) and as a user (re-id of the best and the mean
        recovery); a PNG of each true photo's matched recovery above the photo."""
        import numpy as np
        from PIL import Image

        from fl_sim.core.evaluators.face import to_uint8_hwc
        from fl_sim.core.scoring import RECOVERED_PSNR, best_photo_psnr, score, score_photos

        if target is None:
            raise ValueError("an imprint read-out is one user's")
        metrics, pairs = score_photos(read.images, target, truth, read.mixed)
        metrics.update(seconds=read.seconds, bins_nonempty=len(read.bins), **job.notes)
        if read.cleaned is not None:  # the same read with its mixed candidates cleaned by the prior: did it help?
            cleaned, _ = score_photos(read.cleaned, target, truth, read.mixed)
            idx = [i for i, m in enumerate(read.mixed) if m]
            raw_best = best_photo_psnr(read.images[idx].clamp(-1, 1), target, truth)
            clean_best = best_photo_psnr(read.cleaned[idx], target, truth)
            metrics["cleaned"] = {"photos_recovered": cleaned["photos_recovered"],
                                  "psnr_matched_mean": cleaned["psnr_matched_mean"],
                                  "mixed": len(idx),
                                  "mixed_best_psnr_raw": sum(raw_best) / len(idx) if idx else None,
                                  "mixed_best_psnr_cleaned": sum(clean_best) / len(idx) if idx else None,
                                  "mixed_recovered_raw": sum(v >= RECOVERED_PSNR for v in raw_best),
                                  "mixed_recovered_cleaned": sum(v >= RECOVERED_PSNR for v in clean_best)}
        image = None
        if pairs:
            best = max(metrics["photos"], key=lambda e: e["psnr"])
            clean = [i for i, m in enumerate(read.mixed) if not m] or list(range(len(read.images)))
            mean = read.images[clean].clamp(-1, 1).mean(0)
            s_best, s_mean = score(torch.stack([read.images[best["candidate"]].clamp(-1, 1), mean]),
                                   [target, target], truth)
            per_photo = ("photos_recovered", "psnr_best_photo")  # the read-out's own, over every candidate
            metrics.update({**{k: v for k, v in s_best.items() if k not in per_photo},
                            "best_recovery_psnr": best["psnr"], "best_recovery_photo": best["photo"]})
            metrics.update({f"mean_recovery_{k}": v for k, v in s_mean.items()
                            if k in ("reid_top1", "reid_rank", "face_similarity", "identity_gain")
                            or k.endswith(("_face_similarity", "_reid_top1"))})
            photos = truth.photos[target].float()
            matched = torch.zeros_like(photos)  # grey where no candidate matched that photo
            for i, j in pairs:
                matched[j] = read.images[i].clamp(-1, 1)
            grid = np.concatenate([np.concatenate(list(to_uint8_hwc(row)), axis=1) for row in (matched, photos)],
                                  axis=0)
            name = f"r{job.round:03d}_{target}_{IMPRINT}.png"
            Image.fromarray(grid).save(img_dir / name)
            image = f"attacks/{name}"
        return AttackResult(target, IMPRINT, "finished", image=image, metrics=metrics)


# How much of ``attack.worker_resource`` the worker asks: the resource marks the node, and many runs' workers may
# share one node that carries 1 of it.
RESOURCE_SHARE = 0.01


def make_remote_worker(num_cpus: float, num_gpus: float, resource: str = "") -> Any:
    """The worker as a Ray actor; Ray restarts it if its process dies (the job in flight fails).

    ``resource``: a custom Ray resource; the worker is placed on a node that carries it.
    """
    import ray

    # Jobs run one at a time (the default group); the probe gets its own thread, or a liveness
    # check would queue behind the job in flight and stall the round that submits the next one.
    actor = ray.remote(max_restarts=-1, max_task_retries=0, concurrency_groups={"probe": 1})(AttackWorker)
    placed = {"resources": {resource: RESOURCE_SHARE}} if resource else {}
    return actor.options(num_cpus=num_cpus, num_gpus=num_gpus, **placed).remote(low_priority=num_gpus == 0,
                                                                                gpus=num_gpus)


def ray_env() -> dict[str, Any]:
    """The runtime environment a driver gives its job's workers: this process's import path (as Flower's backend
    does), so the cluster's workers import the same fl-sim, attacks and plugins."""
    import sys

    path = os.pathsep.join([*sys.path, *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])])
    return {"env_vars": {"PYTHONPATH": path}}


def connect_worker_ray(address: str) -> bool:
    """Ray for the attack worker; True when this call initialised it (the caller then shuts it down).

    In a simulation the process is already in the Ray Flower's backend started (or attached to): the worker is
    created there, and ``attack.ray_address``, when set, must name that cluster (its port is compared; ``auto``
    and ``ray://`` addresses cannot be compared and are taken as meant). In the Deployment Engine the ServerApp's
    process has no Ray: it connects to ``address``, or starts a private local Ray when the address is empty.
    """
    from fl_sim.core.loopback import ray_on_loopback
    from fl_sim.core.preflight import check_ray_address

    if ray.is_initialized():
        port = address.rpartition(":")[2]
        if address and address != "auto" and "://" not in address:
            here = ray.get_runtime_context().gcs_address
            if here.rpartition(":")[2] != port:
                raise ConfigError(f"config key 'attack.ray_address': {address} is not the Ray this process runs in "
                                  f"({here}); in a simulation the worker lives in the simulation's Ray "
                                  "(set simulation.ray_address, or leave attack.ray_address empty)")
        return False
    quiet = {"logging_level": "error", "log_to_driver": False}
    if not address:  # a private Ray for this process, on the loopback only
        ray_on_loopback()
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", **quiet)
        return True
    check_ray_address(address, "attack.ray_address")
    ray_on_loopback(address)  # a cluster on 127.0.0.1: this driver is at 127.0.0.1 too
    try:
        ray.init(address=address, runtime_env=ray_env(), **quiet)
    except Exception as exc:  # noqa: BLE001 - Ray's refusals (no cluster for auto, a version mismatch): one line
        raise ConfigError(f"config key 'attack.ray_address': cannot connect to Ray at {address}: "
                          f"{error_line(exc)}") from None
    return True


def check_placement(worker_gpus: float, resource: str) -> None:
    """Some live node of the Ray cluster can hold the worker (its GPUs and its custom resource), or the worker
    would wait forever for a place: a one-line error naming the key instead."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if resource and not any(r.get(resource, 0) >= RESOURCE_SHARE for r in nodes):
        raise ConfigError(f"config key 'attack.worker_resource': no node of the Ray cluster carries resource "
                          f"{resource!r} (start one with ray start ... --resources '{{\"{resource}\": 1}}')")
    fits = [r for r in nodes if r.get("GPU", 0) >= worker_gpus and (not resource or r.get(resource, 0) >= RESOURCE_SHARE)]
    if not fits:
        where = f" that carries {resource!r}" if resource else ""
        most = max((r.get("GPU", 0) for r in nodes), default=0)
        raise ConfigError(f"config key 'attack.worker_gpus': {worker_gpus} GPU(s) asked, but no node{where} of the "
                          f"Ray cluster has that many (most on one node: {most:g})")
