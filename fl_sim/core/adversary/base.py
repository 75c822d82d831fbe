"""What a malicious server's tactic is: its config section, its hooks (craft, recover), the registry, and the
arithmetic every tactic shares (an aggregate minus what was sent)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fl_sim.core.errors import ConfigError
from fl_sim.core.fields import _f, doc
from fl_sim.core.plugins import Parts
from fl_sim.core.users import check_user_choice, choose_users

State = dict[str, npt.NDArray[Any]]  # parameter (and buffer) name -> array, as the server sends or receives it


@dataclass(frozen=True)
class ModelFacts:
    """What a tactic knows of the shared model: the architecture is public."""

    name: str  # the registered model name (model.name)
    parameters: tuple[str, ...]  # trainable parameters, in the model's order (buffers are not among them)


@dataclass(frozen=True)
class Recovered:
    """A user's update as a tactic recovered it: what the attacks should run on, and with which weights."""

    user: str
    update: State  # θ_sent − θ_client per parameter (what the attack matches), float64
    weights: State  # the model weights the update was computed on (the attack's global model)
    exact: tuple[str, ...]  # parameters recovered exactly (to float rounding)
    inexact: tuple[str, ...] = ()  # parameters where other users' updates still mix in


class Tactic:
    """One malicious-server tactic. Subclasses set ``name``/``help`` and override the hooks they need.

    Built once per run for the run's model (``TACTICS.get(name)(facts)``). ``craft`` says what each user of a
    round receives; ``recover`` reads, from what the server got back, the updates the attacks should run on.
    ``one_target_per_round``: the server hands ``craft`` one of the round's targets (rotating over the rounds).
    """

    name: str = ""
    help: str = ""
    one_target_per_round: bool = False
    methods: tuple[str, ...] = ()  # how its recovered observations are attacked (empty: the run's attack.methods)

    def __init__(self, model: ModelFacts) -> None:
        self.model = model

    @classmethod
    def validate(cls, run: AdversaryRunView) -> None:
        """Raise a one-line ConfigError for a run this tactic cannot attack."""

    def prepare(self, run: Any) -> None:
        """Read the run's public figures (data shape, protocol, lr; a ``RunConfig``) once, before the first round."""

    def attack_notes(self) -> dict[str, Any]:
        """Settings the attack worker needs for this tactic's recovered updates (recorded with their metrics)."""
        return {}

    def variant(self, user: str, targets: list[str]) -> str:
        """The model variant ``user`` is told to build this round (``model-variant`` in its train config; "": the
        shared model). The spec is public: it says which architecture the arrays are for, nothing secret."""
        return ""

    def craft(self, rnd: int, global_state: State, users: list[str], targets: list[str]) -> dict[str, State]:
        """The parameters each of ``users`` receives in round ``rnd`` (default: the global model for all)."""
        return {u: global_state for u in users}

    def recover(self, rnd: int, sent: Mapping[str, State], examples: Mapping[str, int], aggregate: State, *,
                global_state: State, targets: list[str],
                replies: Mapping[str, State] | None = None) -> list[Recovered]:
        """The updates to attack, from the round's FedAvg ``aggregate`` of the users who replied (``sent``: what
        each was sent; ``examples``: their FedAvg weights). ``replies``: the individual replies where the server
        sees them (None under secure aggregation); a tactic that claims to defeat it must not read them."""
        return []


TACTICS: Parts[type[Tactic]] = Parts("tactic", "adversary.tactic")


def register_tactic(cls: type[Tactic]) -> type[Tactic]:
    """Register a tactic class under its ``name`` (a plugin's too)."""
    TACTICS.add(cls.name, cls, cls.help)
    return cls


def make_tactic(name: str, model: ModelFacts) -> Tactic:
    """The tactic called ``name``, built for ``model`` (unknown: one line naming adversary.tactic)."""
    return TACTICS.get(name)(model)


@dataclass
class ImprintConfig:
    """Tactic ``imprint``: the block shipped in front of the targets' model (attacks/imprint.py)."""

    bins: int = _f(0, "imprint: bins of the block (0: 4 x data.photos_per_user, every photo one update covers)",
                   min=0)
    scale: float = _f(0.0, "imprint: the block's read-out scale (0: 0.3 for fedsgd, single-step updates; 0.03 for "
                           "fedavg, multi-step: see attacks/imprint.py imprint_parameters)", min=0.0)
    gain: float = _f(0.03, "imprint: the block's gain (activations are O(gain))", min_exclusive=0.0)
    measurement: str = _f("spread", "imprint: what every bin unit measures — spread: the direction along which one "
                                    "person's photos spread most relative to how people differ (from the public "
                                    "faces) | random: a seeded random direction | mean: brightness",
                          choices=("spread", "random", "mean"))
    public_identities: int = _f(256, "imprint: identities of the public synthfaces:prior split the bin thresholds "
                                     "are set from (never the users' photos)", min=8)
    clean_noise: float = _f(0.0, "imprint: also clean the mixed candidates (bins holding several photos) with the "
                                 "diffusion prior attack.prior — noised to this std, denoised by DDIM — and score "
                                 "both (0: off)", min=0.0)


@dataclass
class AdversaryConfig:
    """The server's stance: honest-but-curious (what clients are sent is the global model), or actively malicious."""

    mode: str = _f("curious", "curious: every user gets the global model | malicious: a tactic crafts the "
                              "parameters each user gets in its rounds", choices=("curious", "malicious"))
    tactic: str = _f("", lambda: f"malicious: the tactic (required with mode=malicious): {TACTICS.choices_doc()}")
    users: str = _f("sample:1", "malicious: the tactic's targets: all | half | sample:N (seeded) | comma-separated "
                                "user ids (one per round for tactics that take one: they rotate)")
    rounds: list[int] = _f([], "malicious: rounds the tactic runs in (empty: every round)")
    imprint: ImprintConfig = field(default_factory=ImprintConfig, metadata=doc("tactic imprint"))


class AdversaryRunView(Protocol):
    """The run figures the adversary reads (fl_sim.core.config.RunConfig is one)."""

    @property
    def seed(self) -> int: ...
    @property
    def rounds(self) -> int: ...
    @property
    def protocol(self) -> str: ...
    @property
    def adversary(self) -> AdversaryConfig: ...
    @property
    def defenses(self) -> Any: ...


def malicious(run: AdversaryRunView) -> bool:
    return run.adversary.mode == "malicious"


def tactic_round(run: AdversaryRunView, rnd: int) -> bool:
    """Whether the malicious server's tactic runs in round ``rnd``."""
    a = run.adversary
    return malicious(run) and (not a.rounds or rnd in a.rounds)


def round_index(run: AdversaryRunView, rnd: int) -> int:
    """``rnd``'s position among the tactic's rounds (0, 1, ...): which target a one-target tactic takes."""
    rounds = sorted(run.adversary.rounds)
    return rounds.index(rnd) if rounds else rnd - 1


def adversary_targets(run: AdversaryRunView, users: list[str]) -> list[str]:
    """The tactic's targets among the run's users (a seeded sample is the same every round)."""
    if not malicious(run):
        return []
    return choose_users(run.adversary.users, users, f"adversary:{run.seed}", "adversary.users")


def validate_adversary(run: AdversaryRunView) -> None:
    """Every adversary error before a run folder exists (one line each)."""
    from fl_sim.core.defenses import server_wrappers

    a = run.adversary
    if not malicious(run):
        if a.tactic:
            raise ConfigError(f"config key 'adversary.tactic': {a.tactic!r} is set but adversary.mode=curious "
                              "(set adversary.mode=malicious, or leave the tactic empty)")
        return
    if not a.tactic:
        raise ConfigError(f"config key 'adversary.tactic': required with adversary.mode=malicious "
                          f"(known: {', '.join(TACTICS.names())})")
    cls = TACTICS.get(a.tactic)  # unknown: one line naming adversary.tactic and the known tactics
    check_user_choice(a.users, "adversary.users")
    if a.users.strip() == "sample:0":
        raise ConfigError("config key 'adversary.users': sample:0 targets nobody (sample:N needs N >= 1)")
    bad = [r for r in a.rounds if not 1 <= r <= run.rounds]
    if bad:
        raise ConfigError(f"config key 'adversary.rounds': {bad} outside 1..{run.rounds}")
    if server_wrappers(run):  # type: ignore[arg-type]
        raise ConfigError("config key 'adversary.mode': malicious does not run with server-side user-level DP "
                          "(Flower's DP wrappers clip updates against the global model, not what each user got)")
    cls.validate(run)


# -- the arithmetic every tactic shares ------------------------------------------------------------
def fedavg_weights(examples: Mapping[str, int]) -> dict[str, float]:
    """FedAvg's weight per user: n_u / Σ n (Flower weighs by the reply's ``num-examples``)."""
    total = float(sum(examples.values()))
    return {u: n / total for u, n in examples.items()}


def aggregate_update(sent: Mapping[str, State], examples: Mapping[str, int], aggregate: State,
                     keys: tuple[str, ...] | None = None) -> State:
    """Σ_u w_u (θ_sent,u − θ_u) = Σ_u w_u θ_sent,u − aggregate, in float64: the weighted sum of the updates, each
    against what that user was sent. Needs only the aggregate (what secure aggregation gives the server)."""
    w = fedavg_weights(examples)
    names = keys if keys is not None else tuple(aggregate)
    out: State = {}
    for k in names:
        acc = np.zeros(np.shape(aggregate[k]), dtype=np.float64)
        for u, wu in w.items():
            acc += wu * np.asarray(sent[u][k], dtype=np.float64)
        out[k] = acc - np.asarray(aggregate[k], dtype=np.float64)
    return out


def repaired_global(global_state: State, sent: Mapping[str, State], examples: Mapping[str, int],
                    aggregate: State) -> State:
    """The next global model of a crafted round: the true model minus the weighted sum of the updates (each against
    what its user was sent), so the crafted parameters never leak into the model every user gets next round.
    Non-float entries (counters) are the aggregate's."""
    delta = aggregate_update(sent, examples, aggregate,
                             tuple(k for k, v in global_state.items() if np.issubdtype(np.asarray(v).dtype, np.floating)))
    out: State = {}
    for k, v in global_state.items():
        g = np.asarray(v)
        out[k] = (g.astype(np.float64) - delta[k]).astype(g.dtype) if k in delta else np.asarray(aggregate[k])
    return out
