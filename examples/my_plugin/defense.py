"""A client-side defense of one's own: the user clips their update's L2 norm (and may add Gaussian noise) after
training, before sending it. Config section ``defenses.update_clip``; the ``after_train`` hook does the work."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fl_sim.core.defenses import Defense, register_defense
from fl_sim.core.defenses.base import Record, RunView
from fl_sim.core.fields import _f
from fl_sim.core.users import USERS_DOC


@dataclass
class UpdateClipConfig:
    """Clip each selected user's update (after - before) to an L2 norm, then optionally add noise."""

    enabled: bool = _f(False, "clip (and optionally noise) each selected user's update before it is sent")
    max_norm: float = _f(1.0, "L2 norm the whole update is clipped to", min_exclusive=0.0)
    noise: float = _f(0.0, "Gaussian noise std per entry, as a multiple of max_norm (0: clipping only)", min=0.0)
    users: str = _f("all", USERS_DOC)


def clip_update(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], max_norm: float, noise: float,
                seed: int) -> dict[str, torch.Tensor]:
    """New weights = before + clip(after - before) (+ noise), over the floating-point tensors."""
    keys = [k for k in after if after[k].is_floating_point()]
    delta = {k: (after[k] - before[k]).float() for k in keys}
    norm = float(torch.sqrt(sum((v * v).sum() for v in delta.values())))
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    gen = torch.Generator().manual_seed(seed)
    out = dict(after)
    for k in keys:
        d = delta[k] * scale
        if noise:
            d = d + torch.randn(d.shape, generator=gen) * (noise * max_norm)
        out[k] = (before[k].float() + d).to(after[k].dtype)
    return out


class UpdateClip(Defense[UpdateClipConfig]):
    """The client bounds its update's norm after training; the server sees the clipped (noised) update."""

    name = "update_clip"
    help = "update clipping (example plugin)"
    config_type = UpdateClipConfig
    section_rank, record_rank = 10, 10  # after the built-in defenses' sections; applied after compression
    per_user = True
    switches_on = frozenset({"max_norm", "noise"})  # setting either turns it on

    def record(self, section: UpdateClipConfig, run: RunView) -> Record:
        return {"max_norm": section.max_norm, **({"noise": section.noise} if section.noise else {})}

    def describe(self, rec: Record) -> str:
        return f"update_clip C={rec['max_norm']:g}" + (f" noise {rec['noise']:g}" if rec.get("noise") else "")

    def visibility(self, rec: Record) -> str:
        if rec.get("noise"):
            return "update clipping bounds the update's norm and noise blurs it, but its direction mostly remains"
        return "update clipping bounds the update's norm but keeps its direction"

    def after_train(self, rec: Record, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor],
                    seed: int) -> dict[str, torch.Tensor]:
        return clip_update(before, after, float(rec["max_norm"]), float(rec.get("noise", 0.0)), seed)


UPDATE_CLIP = register_defense(UpdateClip())
