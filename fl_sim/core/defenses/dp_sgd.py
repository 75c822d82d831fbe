"""DP-SGD (Opacus): its config section, its schedule and noise (from a target epsilon), its client training."""

from __future__ import annotations

import copy
import functools
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fl_sim.core.defenses.base import DEFENSES, Defense, NodeState, Record, RunView, Trained, TrainBatch
from fl_sim.core.errors import ConfigError
from fl_sim.core.fields import _f
from fl_sim.core.models import Head, task_loss
from fl_sim.core.records import LocalTrainResult, PrivacyFigures
from fl_sim.core.users import USERS_DOC

ACCOUNTANT_KEY = "dp-sgd-accountant"  # a node's Opacus accountant, kept in Flower's per-node state


@dataclass
class DpSgdConfig:
    """DP-SGD (Opacus) in the selected users' local training: per-sample clipping + Gaussian noise."""

    enabled: bool = _f(False, "train under DP-SGD (setting any other dp_sgd key turns it on)")
    noise_multiplier: float = _f(1.0, "z: noise std / clipping norm (unused when target_epsilon > 0)", min=0.0)
    # Defaults measured on the demo federation (docs/BENCHMARKS.md, DP-SGD defaults): C = 1 clipped the
    # model's per-sample gradients (median norm ~21) to a twentieth, and Poisson-sampled batches of 8 of
    # 32 photos made even unclipped, noise-free training swing by +-0.1 accuracy from run to run.
    max_grad_norm: float = _f(20.0, "C: per-sample gradient clipping norm (20: near the demo model's median "
                                    "per-sample gradient norm, so clipping binds mildly)", min_exclusive=0.0)
    lr: float = _f(0.015, "DP-SGD's local learning rate (0: the run's lr); 0.015 makes up for clipping's "
                          "smaller steps on the demo", min=0.0)
    batch_size: int = _f(0, "FedAvg: expected (Poisson) batch of each DP-SGD step (0: all the user's photos, "
                            "sample rate 1: full-batch DP gradient descent)", min=0)
    epochs: int = _f(4, "FedAvg: DP-SGD local epochs per round (0: the run's local_epochs); with the full "
                        "batch one step each, so 4 = the 4 steps a round of the demo's undefended training", min=0)
    target_epsilon: float = _f(0.0, "> 0: Opacus picks z to reach this epsilon at delta after all planned rounds",
                               min=0.0)
    delta: float = _f(1e-5, "delta of the (epsilon, delta) guarantee", min_exclusive=0.0, max=0.1)
    accountant: str = _f("rdp", "Opacus accountant: rdp | prv", choices=("rdp", "prv"))
    users: str = _f("all", USERS_DOC)


def _section(run: RunView) -> DpSgdConfig:
    return DP_SGD.section(run)


def dp_sgd_training(run: RunView) -> tuple[float, int, int]:
    """(lr, batch size, local epochs) of one user's DP-SGD: its own keys, 0 falling back to the run's."""
    dp = _section(run)
    n = run.data.photos_per_user
    if run.protocol == "fedsgd":
        return dp.lr or run.lr, n, 1
    return dp.lr or run.lr, min(dp.batch_size or n, n), dp.epochs or run.local_epochs


def dp_sgd_schedule(run: RunView) -> tuple[float, int]:
    """(sample rate q, optimizer steps per round) of one user's DP-SGD with Poisson sampling."""
    n = run.data.photos_per_user
    if run.protocol == "fedsgd":
        return 1.0, 1
    _, batch, epochs = dp_sgd_training(run)
    batches = math.ceil(n / batch)  # Opacus: q = 1 / len(loader), len(loader) steps an epoch
    return 1.0 / batches, batches * epochs


def dp_sgd_noise(run: RunView) -> float:
    """z: the configured noise multiplier, or the one Opacus computes for target_epsilon over all rounds."""
    dp = _section(run)
    if dp.target_epsilon <= 0:
        return dp.noise_multiplier
    q, steps = dp_sgd_schedule(run)
    try:
        # A user takes part in at most every round: planning for all of them is the safe side.
        return _noise_for(dp.target_epsilon, dp.delta, q, steps * run.rounds, dp.accountant)
    except ValueError as exc:
        raise ConfigError(f"config key 'defenses.dp_sgd.target_epsilon': {dp.target_epsilon} at delta {dp.delta} "
                          f"is unattainable over {run.rounds} rounds ({exc})") from None


@functools.lru_cache(maxsize=64)
def _noise_for(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Opacus's z for a target epsilon: a binary search, asked for by validation, the run folder, the
    server and every client actor, hence cached per process."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():  # Opacus warns about its order grid while searching; not the user's concern
        warnings.simplefilter("ignore")
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant=accountant))


@dataclass(frozen=True)
class DpTrainResult:
    """A DP-SGD round: the usual result, plus the accountant's state and epsilon after it."""

    result: LocalTrainResult
    epsilon: float
    accountant_state: dict[str, Any]


def dp_local_train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, heads: list[Head], *,
                   protocol: str, lr: float, epochs: int, batch_size: int, seed: int, noise_multiplier: float,
                   max_grad_norm: float, delta: float, accountant: str,
                   accountant_state: dict[str, Any] | None) -> DpTrainResult:
    """Local training under DP-SGD (Opacus: Poisson sampling, per-sample clipping, Gaussian noise).

    ``accountant_state`` is this user's accountant from earlier rounds: Opacus builds a new engine
    per call, so without it epsilon would restart at every round instead of accumulating.
    """
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)  # Poisson sampling and the noise draw from torch's global generator
    engine = PrivacyEngine(accountant=accountant)
    if accountant_state:
        engine.accountant.load_state_dict(accountant_state)
    inner = copy.deepcopy(model)  # Opacus hooks stay on the copy; the caller's model is reused next round
    inner.train()
    n = images.shape[0]
    loader = DataLoader(TensorDataset(images, labels), batch_size=n if protocol == "fedsgd" else batch_size)
    opt = torch.optim.SGD(inner.parameters(), lr=lr)
    private, dp_opt, dp_loader = engine.make_private(module=inner, optimizer=opt, data_loader=loader,
                                                     noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                                                     poisson_sampling=True, grad_sample_mode="hooks")
    steps, total = 0, 0.0
    for _ in range(1 if protocol == "fedsgd" else epochs):
        for x, y in dp_loader:
            # An empty Poisson batch still steps (noise only), as the accounting assumes.
            dp_opt.zero_grad(set_to_none=True)
            loss = task_loss(private(x), y, heads)
            loss.backward()  # type: ignore[no-untyped-call]
            dp_opt.step()
            steps += 1
            total += float(loss.detach())
    model.load_state_dict(inner.state_dict())
    eps = float(engine.accountant.get_epsilon(delta)) if noise_multiplier > 0 else float("inf")
    state = dict(engine.accountant.state_dict())
    return DpTrainResult(LocalTrainResult(loss=total / max(steps, 1), local_steps=steps, num_examples=n), eps, state)


def _load_accountant(state: NodeState) -> dict[str, Any] | None:
    text = state.load(ACCOUNTANT_KEY)
    if text is None:
        return None
    saved = json.loads(text)
    return {"history": [tuple(h) for h in saved["history"]], "mechanism": saved["mechanism"]}


def _save_accountant(state: NodeState, acc: dict[str, Any]) -> None:
    state.save(ACCOUNTANT_KEY, json.dumps({"history": [list(h) for h in acc["history"]], "mechanism": acc["mechanism"]}))


class DpSgd(Defense[DpSgdConfig]):
    """Per-sample clipping and Gaussian noise in the user's own training; epsilon accumulates per node."""

    name = "dp_sgd"
    help = "DP-SGD (Opacus)"
    config_type = DpSgdConfig
    section_rank, record_rank = 0, 0
    per_user = True
    switches_on = frozenset({"noise_multiplier", "max_grad_norm", "target_epsilon"})

    def validate(self, section: DpSgdConfig, run: RunView, sections: Mapping[str, Any]) -> None:
        if not section.enabled:
            return
        from opacus.validators import ModuleValidator

        from fl_sim.core.models import build_model, task_heads

        # Opacus judges the layers, not the heads: before task=auto is settled, either task will do.
        task = "identity" if run.task == "identity" else "attributes"
        model = build_model(run.model.name, task_heads(task, [f"u{i}" for i in range(run.users)]),
                            run.data.image_size, run.model.width, run.seed, run.model.norm)
        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            first = str(problems[0]).splitlines()[0].split(". ")[0]
            raise ConfigError(f"config key 'defenses.dp_sgd': model {run.model.name} (norm={run.model.norm}) cannot "
                              f"train under DP-SGD: {first} (use model.norm=group)")
        dp_sgd_noise(run)

    def record(self, section: DpSgdConfig, run: RunView) -> Record:
        q, steps = dp_sgd_schedule(run)
        lr, batch, epochs = dp_sgd_training(run)
        return {"noise_multiplier": dp_sgd_noise(run), "max_grad_norm": section.max_grad_norm,
                "delta": section.delta, "sample_rate": q, "steps_per_round": steps,
                "accountant": section.accountant, "lr": lr, "batch_size": batch, "epochs": epochs,
                "target_epsilon": section.target_epsilon or None}

    def resumed_state(self, rec: Record, last: Mapping[str, Any]) -> dict[str, str]:
        """The user's accountant after their last stored round: Opacus merges the steps of one (z, q) into one
        history entry, so (z, q, the user's steps so far) is the whole of it."""
        if "dp-steps" not in last:
            return {}
        return {ACCOUNTANT_KEY: json.dumps({"history": [[float(last["dp-noise-multiplier"]),
                                                         float(last["dp-sample-rate"]), int(last["dp-steps"])]],
                                            "mechanism": rec["accountant"]})}

    def describe(self, rec: Record) -> str:
        return f"dp_sgd z={rec['noise_multiplier']:.3g} C={rec['max_grad_norm']:g}"

    def visibility(self, rec: Record) -> str:
        return ("DP-SGD noise is in the update the server sees" if rec["noise_multiplier"] > 0 else
                "DP-SGD with z=0 clips but adds no noise (epsilon infinite)")

    def train(self, rec: Record, batch: TrainBatch, state: NodeState) -> Trained | None:
        # DP-SGD's own lr / batch / epochs (dp_sgd_training), not the run's
        r = dp_local_train(batch.model, batch.images, batch.labels, batch.heads, protocol=batch.protocol,
                           lr=rec["lr"], epochs=rec["epochs"], batch_size=rec["batch_size"], seed=batch.seed,
                           noise_multiplier=rec["noise_multiplier"], max_grad_norm=rec["max_grad_norm"],
                           delta=rec["delta"], accountant=rec["accountant"], accountant_state=_load_accountant(state))
        _save_accountant(state, r.accountant_state)
        privacy = PrivacyFigures(noise_multiplier=float(rec["noise_multiplier"]),
                                 max_grad_norm=float(rec["max_grad_norm"]), delta=float(rec["delta"]),
                                 sample_rate=float(rec["sample_rate"]),
                                 steps=int(sum(h[2] for h in r.accountant_state["history"])),
                                 # z = 0: clipping only, no guarantee, no epsilon
                                 epsilon=r.epsilon if math.isfinite(r.epsilon) else None)
        return Trained(r.result, float(rec["lr"]), privacy)


DP_SGD = DpSgd()
DEFENSES.add(DP_SGD.name, DP_SGD, DP_SGD.help)
