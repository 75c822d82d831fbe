"""Shared models (a registry) and the FL task: which heads, which labels, which loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from fl_sim.core.evaluators.face import AGE_BANDS, GENDERS
from fl_sim.core.plugins import Parts

ModelFactory = Callable[..., nn.Module]  # (n_outputs, image_size, width, norm) -> a fresh module
MODELS: Parts[ModelFactory] = Parts("model", "model.name")


def register_model(name: str, help: str = "") -> Callable[[ModelFactory], ModelFactory]:
    """Register a model class (or factory) taking ``n_outputs, image_size, width, norm`` under ``name``."""
    return MODELS.register(name, help)


@dataclass(frozen=True)
class Head:
    """One classification head: a slice of the model's last layer."""

    name: str
    classes: tuple[str, ...]


def task_heads(task: str, user_ids: list[str]) -> list[Head]:
    """The heads of the FL task: gender + age band, or one class per user."""
    if task == "attributes":
        return [Head("gender", GENDERS), Head("age_band", tuple(b[0] for b in AGE_BANDS))]
    if task == "identity":
        return [Head("identity", tuple(user_ids))]
    if task == "auto":  # settled by fl_sim.federation.resolve_task once the data is known
        raise ValueError("task 'auto' is not resolved yet: call fl_sim.federation.prepare_users(cfg) first")
    raise ValueError(f"unknown task {task!r}")


def user_labels(heads: list[Head], user: str, attributes: dict[str, str | None]) -> list[int]:
    """Per-head class index for a user's photos (every photo shares them); -1 where unknown."""
    out = []
    for h in heads:
        value = user if h.name == "identity" else attributes.get(h.name)
        out.append(h.classes.index(value) if value in h.classes else -1)
    return out


def task_loss(logits: torch.Tensor, labels: torch.Tensor, heads: list[Head], reduction: str = "mean") -> torch.Tensor:
    """Sum over heads of the cross-entropy; labels (N, heads), -1 ignored.

    Branch-free (masking instead of `if`), so it also runs under torch.func.vmap for per-sample
    gradients; a batch without labels gives a zero that still backpropagates.
    """
    total = (logits * 0).sum(1)
    start = 0
    mean_total = (logits * 0).sum()
    for k, h in enumerate(heads):
        part = logits[:, start:start + len(h.classes)]
        start += len(h.classes)
        y = labels[:, k]
        mask = (y >= 0).to(logits.dtype)
        ce = F.cross_entropy(part, y.clamp_min(0), reduction="none") * mask
        total = total + ce
        mean_total = mean_total + ce.sum() / mask.sum().clamp_min(1.0)
    if reduction == "none":
        return total
    if reduction == "sum":
        return total.sum()
    return mean_total


@torch.no_grad()
def head_accuracy(logits: torch.Tensor, labels: torch.Tensor, heads: list[Head]) -> dict[str, tuple[int, int]]:
    """Per head: (correct, counted) over labelled rows."""
    out, start = {}, 0
    for k, h in enumerate(heads):
        pred = logits[:, start:start + len(h.classes)].argmax(1)
        start += len(h.classes)
        y = labels[:, k]
        mask = y >= 0
        out[h.name] = (int((pred[mask] == y[mask]).sum()), int(mask.sum()))
    return out


def _gn(ch: int, norm: str = "group") -> nn.Module:
    # GroupNorm by default, not BatchNorm: Opacus refuses BatchNorm (it mixes samples, so per-sample
    # gradients stop being per-sample). BatchNorm stays selectable for non-DP studies.
    return nn.BatchNorm2d(ch) if norm == "batch" else nn.GroupNorm(min(8, ch), ch)


@register_model("convnet", "three conv layers, GroupNorm")
class ConvNet(nn.Module):
    """Three conv layers with GroupNorm, then a linear classifier on a 4x4 pooled map."""

    def __init__(self, n_outputs: int, image_size: int = 32, width: int = 32, norm: str = "group") -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), _gn(width, norm), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), _gn(2 * width, norm), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), _gn(4 * width, norm), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Linear(4 * width * 16, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x).flatten(1))
        return out


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str = "group") -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.n1 = _gn(cout, norm)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.n2 = _gn(cout, norm)
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _gn(cout, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.n1(self.c1(x)))
        return F.relu(self.n2(self.c2(h)) + self.skip(x))


@register_model("resnet", "small ResNet, three residual stages, GroupNorm")
class ResNet(nn.Module):
    """A small ResNet-style net (stem + three residual stages) with GroupNorm."""

    def __init__(self, n_outputs: int, image_size: int = 32, width: int = 32, norm: str = "group") -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), _gn(width, norm), nn.ReLU())
        self.stages = nn.Sequential(_Block(width, width, 1, norm), _Block(width, 2 * width, 2, norm),
                                    _Block(2 * width, 4 * width, 2, norm))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.pool(self.stages(self.stem(x))).flatten(1))
        return out


@register_model("mlp", "fully connected first layer, for analytic leakage")
class MLP(nn.Module):
    """Fully connected first layer with bias: a sample's image is ∇W_i / ∇b_i (analytic leakage)."""

    def __init__(self, n_outputs: int, image_size: int = 32, width: int = 32, norm: str = "group") -> None:
        super().__init__()  # no normalisation layers: ``norm`` is accepted for a uniform signature
        hidden = 8 * width
        self.fc1 = nn.Linear(3 * image_size * image_size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x.flatten(1)))
        out: torch.Tensor = self.classifier(F.relu(self.fc2(h)))
        return out


def build_model(name: str, heads: list[Head], image_size: int, width: int, seed: int, norm: str = "group") -> nn.Module:
    """A freshly initialised model, deterministic in ``seed``; ``norm``: group | batch."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}")
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return MODELS.get(name)(n_outputs=sum(len(h.classes) for h in heads), image_size=image_size, width=width, norm=norm)
    finally:
        torch.random.set_rng_state(gen_state)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, heads: list[Head]) -> dict[str, float]:
    """Loss and per-head accuracy on held-out photos."""
    model.eval()
    logits = model(images)
    out: dict[str, float] = {"loss": float(task_loss(logits, labels, heads))}
    correct = counted = 0
    for name, (c, k) in head_accuracy(logits, labels, heads).items():
        out[f"acc_{name}"] = c / k if k else float("nan")
        correct += c
        counted += k
    out["accuracy"] = correct / counted if counted else float("nan")
    return out


class Imprinted(nn.Module):
    """The shared model behind an imprint block: its state is the shared model's keys plus ``imprint.*``.

    The shared model's modules are this module's own children (the same objects), so loading the received arrays
    loads the shared model too, and the shared keys keep their names (aggregation never sees a prefix)."""

    def __init__(self, base: nn.Module, block: nn.Module) -> None:
        super().__init__()
        self.imprint = block
        for name, child in base.named_children():
            self.add_module(name, child)
        for name, p in base.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in base.named_buffers(recurse=False):
            self.register_buffer(name, b)
        object.__setattr__(self, "_base", base)  # not a child: its keys are already this module's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.__dict__["_base"](self.imprint(x))
        return out


def with_variant(base: nn.Module, spec: str, image_size: int) -> nn.Module:
    """The model a train instruction's ``model-variant`` describes around ``base`` ("": ``base`` itself).

    ``imprint:<bins>``: an imprint block (attacks/imprint.py) in front of the shared model; its parameters come with
    the received arrays. A client builds what it is told and trains it as usual: the threat model lets the server
    choose the architecture it ships."""
    if not spec:
        return base
    kind, _, arg = spec.partition(":")
    if kind == "imprint" and arg.isdigit() and int(arg) >= 2:
        from attacks.imprint import ImprintBlock

        return Imprinted(base, ImprintBlock((3, image_size, image_size), int(arg)))
    raise ValueError(f"unknown model variant {spec!r} (known: imprint:<bins>)")
