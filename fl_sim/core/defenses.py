"""Client defenses: who uses which, DP-SGD's resolved noise, update compression, and what each hides."""

from __future__ import annotations

import functools
import math
import warnings
from typing import TYPE_CHECKING, Any

import torch

from fl_sim.core.errors import ConfigError
from fl_sim.core.users import check_user_choice, choose_users

if TYPE_CHECKING:
    from fl_sim.core.config import RunConfig

# What each user-level DP mode lets a curious server see of one user's update (STACK.md: Flower's
# server-side wrappers clip each reply and hand it to the wrapped strategy before central noise is added
# to the aggregate; client-side fixed clipping likewise noises only the aggregate).
USER_DP_VISIBILITY = {
    "off": "the server sees each user's exact update",
    "client-fixed": "the server sees each user's clipped update without noise (noise is added to the aggregate): "
                    "does not hide the user from the server",
    "server-fixed": "the server clips each update itself and sees it without noise: does not hide the user",
    "server-adaptive": "the server clips each update itself and sees it without noise: does not hide the user",
    "local": "each user clips and noises their own update before sending (LocalDpMod): hides the user to the "
             "extent of its epsilon",
}


def dp_sgd_training(cfg: RunConfig) -> tuple[float, int, int]:
    """(lr, batch size, local epochs) of one user's DP-SGD: its own keys, 0 falling back to the run's."""
    dp = cfg.defenses.dp_sgd
    n = cfg.data.photos_per_user
    if cfg.protocol == "fedsgd":
        return dp.lr or cfg.lr, n, 1
    return dp.lr or cfg.lr, min(dp.batch_size or n, n), dp.epochs or cfg.local_epochs


def dp_sgd_schedule(cfg: RunConfig) -> tuple[float, int]:
    """(sample rate q, optimizer steps per round) of one user's DP-SGD with Poisson sampling."""
    n = cfg.data.photos_per_user
    if cfg.protocol == "fedsgd":
        return 1.0, 1
    _, batch, epochs = dp_sgd_training(cfg)
    batches = math.ceil(n / batch)  # Opacus: q = 1 / len(loader), len(loader) steps an epoch
    return 1.0 / batches, batches * epochs


def dp_sgd_noise(cfg: RunConfig) -> float:
    """z: the configured noise multiplier, or the one Opacus computes for target_epsilon over all rounds."""
    dp = cfg.defenses.dp_sgd
    if dp.target_epsilon <= 0:
        return dp.noise_multiplier
    q, steps = dp_sgd_schedule(cfg)
    try:
        # A user takes part in at most every round: planning for all of them is the safe side.
        return _noise_for(dp.target_epsilon, dp.delta, q, steps * cfg.rounds, dp.accountant)
    except ValueError as exc:
        raise ConfigError(f"config key 'defenses.dp_sgd.target_epsilon': {dp.target_epsilon} at delta {dp.delta} "
                          f"is unattainable over {cfg.rounds} rounds ({exc})") from None


@functools.lru_cache(maxsize=64)
def _noise_for(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Opacus's z for a target epsilon: a binary search, asked for by validation, the run folder, the
    server and every client actor, hence cached per process."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():  # Opacus warns about its order grid while searching; not the user's concern
        warnings.simplefilter("ignore")
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant=accountant))


def validate_defenses(cfg: RunConfig) -> None:
    """Every defense error before any training starts (one line each)."""
    d = cfg.defenses
    for key, spec in (("defenses.dp_sgd.users", d.dp_sgd.users), ("defenses.compression.users", d.compression.users)):
        check_user_choice(spec, key)
    if d.dp_sgd.enabled:
        from opacus.validators import ModuleValidator

        from fl_sim.core.models import build_model, task_heads

        # Opacus judges the layers, not the heads: before task=auto is settled, either task will do.
        task = "identity" if cfg.task == "identity" else "attributes"
        model = build_model(cfg.model.name, task_heads(task, [f"u{i}" for i in range(cfg.users)]),
                            cfg.data.image_size, cfg.model.width, cfg.seed, cfg.model.norm)
        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            first = str(problems[0]).splitlines()[0].split(". ")[0]
            raise ConfigError(f"config key 'defenses.dp_sgd': model {cfg.model.name} (norm={cfg.model.norm}) cannot "
                              f"train under DP-SGD: {first} (use model.norm=group)")
        dp_sgd_noise(cfg)
    if d.secagg.enabled:
        n = cfg.clients_in_round()
        s = d.secagg
        if n < s.reconstruction_threshold:
            raise ConfigError(f"config key 'defenses.secagg.reconstruction_threshold': {s.reconstruction_threshold} "
                              f"shares needed but only {n} clients per round")
        if s.num_shares and not s.reconstruction_threshold < s.num_shares <= n:
            raise ConfigError(f"config key 'defenses.secagg.num_shares': must be in "
                              f"({s.reconstruction_threshold}, {n}] (threshold, clients per round), got {s.num_shares}")
        if not s.num_shares and n <= s.reconstruction_threshold:
            raise ConfigError(f"config key 'defenses.secagg.reconstruction_threshold': must be below the {n} "
                              f"clients per round (SecAgg+ shares each secret among them), got "
                              f"{s.reconstruction_threshold}")
        if d.user_dp.mode != "off":
            raise ConfigError("config key 'defenses.user_dp.mode': Flower's DP wrappers and SecAgg+ run on different "
                              "server APIs in Flower 1.41; use one of them")
        if cfg.utility_eval != "harness":
            raise ConfigError("config key 'utility_eval': SecAgg+ runs use the harness evaluation")


def user_defenses(cfg: RunConfig, users: list[str]) -> dict[str, dict[str, Any]]:
    """Per user: the defenses their updates went through (what the store and every attack record say)."""
    d = cfg.defenses
    dp_users = set(choose_users(d.dp_sgd.users, users, f"dp_sgd:{cfg.seed}", "defenses.dp_sgd.users")
                   ) if d.dp_sgd.enabled else set()
    comp = d.compression
    comp_on = comp.topk > 0 or comp.prune > 0 or comp.quantize_bits > 0
    comp_users = set(choose_users(comp.users, users, f"compression:{cfg.seed}", "defenses.compression.users")
                     ) if comp_on else set()
    z = dp_sgd_noise(cfg) if dp_users else None
    q, steps = dp_sgd_schedule(cfg)
    dp_lr, dp_batch, dp_epochs = dp_sgd_training(cfg)
    out: dict[str, dict[str, Any]] = {}
    for u in sorted(users):
        rec: dict[str, Any] = {}
        if u in dp_users:
            rec["dp_sgd"] = {"noise_multiplier": z, "max_grad_norm": d.dp_sgd.max_grad_norm, "delta": d.dp_sgd.delta,
                             "sample_rate": q, "steps_per_round": steps, "accountant": d.dp_sgd.accountant,
                             "lr": dp_lr, "batch_size": dp_batch, "epochs": dp_epochs,
                             "target_epsilon": d.dp_sgd.target_epsilon or None}
        if u in comp_users:
            rec["compression"] = {k: v for k, v in (("topk", comp.topk), ("prune", comp.prune),
                                                    ("quantize_bits", comp.quantize_bits)) if v}
        if d.user_dp.mode != "off":
            ud = d.user_dp
            rec["user_dp"] = ({"mode": "local", "clipping_norm": ud.clipping_norm, "epsilon": ud.local_epsilon,
                               "delta": ud.local_delta} if ud.mode == "local" else
                              {"mode": ud.mode, "clipping_norm": ud.clipping_norm, "noise_multiplier": ud.noise_multiplier})
        if d.secagg.enabled:
            rec["secagg"] = {"num_shares": d.secagg.num_shares or cfg.clients_in_round(),
                             "reconstruction_threshold": d.secagg.reconstruction_threshold}
        out[u] = rec
    return out


def describe(rec: dict[str, Any]) -> str:
    """One line: a user's defenses, e.g. 'dp_sgd z=2 C=1; topk 0.1'."""
    parts = []
    if "dp_sgd" in rec:
        p = rec["dp_sgd"]
        parts.append(f"dp_sgd z={p['noise_multiplier']:.3g} C={p['max_grad_norm']:g}")
    if "compression" in rec:
        parts.append(" ".join(f"{k} {v:g}" for k, v in rec["compression"].items()))
    if "user_dp" in rec:
        parts.append(f"user_dp {rec['user_dp']['mode']}")
    if "secagg" in rec:
        parts.append("secagg+")
    return "; ".join(parts) or "none"


def hides_user(rec: dict[str, Any]) -> str:
    """What the server can see of this user's single update, given their defenses."""
    if "secagg" in rec:
        return "SecAgg+: the server sees only the round's aggregate, never this user's update"
    notes = []
    if "dp_sgd" in rec:
        z = rec["dp_sgd"]["noise_multiplier"]
        notes.append("DP-SGD noise is in the update the server sees" if z > 0 else
                     "DP-SGD with z=0 clips but adds no noise (epsilon infinite)")
    if "user_dp" in rec:
        notes.append(USER_DP_VISIBILITY[rec["user_dp"]["mode"]])
    if "compression" in rec:
        notes.append("compression hides small entries but keeps the update's largest ones")
    return "; ".join(notes) or USER_DP_VISIBILITY["off"]


def compress_update(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], spec: dict[str, Any],
                    seed: int) -> dict[str, torch.Tensor]:
    """New weights = before + compressed (after - before): pruning, top-k, then quantisation."""
    keys = [k for k in after if after[k].is_floating_point()]
    delta = {k: (after[k] - before[k]).float() for k in keys}
    if spec.get("prune"):
        for k, v in delta.items():
            m = int(spec["prune"] * v.numel())
            if m:
                cut = v.abs().flatten().kthvalue(m).values
                delta[k] = torch.where(v.abs() > cut, v, torch.zeros_like(v))
    if spec.get("topk"):
        flat = torch.cat([v.flatten() for v in delta.values()])
        keep = max(1, int(math.ceil(spec["topk"] * flat.numel())))
        cut = flat.abs().topk(keep).values[-1]
        delta = {k: torch.where(v.abs() >= cut, v, torch.zeros_like(v)) for k, v in delta.items()}
    if spec.get("quantize_bits"):
        gen = torch.Generator().manual_seed(seed)
        levels = 2 ** int(spec["quantize_bits"]) - 1
        for k, v in delta.items():
            lo, hi = v.min(), v.max()
            if hi > lo:
                scaled = (v - lo) / (hi - lo) * levels
                # Stochastic rounding: unbiased, so averaging many users' updates keeps the mean.
                q = torch.floor(scaled + torch.rand(v.shape, generator=gen))
                delta[k] = q / levels * (hi - lo) + lo
    out = dict(after)
    for k in keys:
        out[k] = (before[k].float() + delta[k]).to(after[k].dtype)
    return out

