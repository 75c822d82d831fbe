"""What a defense is: its config section, client and server hooks, what it leaves the server to see; the registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy.typing as npt
import torch

from fl_sim.core.models import Head
from fl_sim.core.names import EXACT_UPDATE as EXACT_UPDATE  # what an undefended user leaves the server
from fl_sim.core.records import LocalTrainResult, PrivacyFigures
from fl_sim.core.plugins import Parts

S = TypeVar("S")
Record = dict[str, Any]  # one defense's entry in a user's defense record (stored as JSON)
StrategyWrapper = Callable[[Any], Any]  # a Flower strategy -> the strategy wrapped around it


class DataView(Protocol):
    """The dataset figures a defense reads."""

    @property
    def photos_per_user(self) -> int: ...
    @property
    def image_size(self) -> int: ...


class ModelView(Protocol):
    """The model figures a defense reads."""

    @property
    def name(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def norm(self) -> str: ...


class RunView(Protocol):
    """The run figures the defenses read (fl_sim.core.config.RunConfig is one): defenses never import the config."""

    @property
    def seed(self) -> int: ...
    @property
    def users(self) -> int: ...
    @property
    def rounds(self) -> int: ...
    @property
    def protocol(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def lr(self) -> float: ...
    @property
    def local_epochs(self) -> int: ...
    @property
    def utility_eval(self) -> str: ...
    @property
    def data(self) -> DataView: ...
    @property
    def model(self) -> ModelView: ...
    @property
    def defenses(self) -> Any: ...  # the assembled sections, one attribute per registered defense

    def clients_in_round(self) -> int: ...


class NodeState(Protocol):
    """Text a client node keeps between rounds (Flower's per-node ``context.state``)."""

    def load(self, key: str) -> str | None: ...
    def save(self, key: str, text: str) -> None: ...


@dataclass(frozen=True)
class TrainBatch:
    """One user's local training input and its schedule seed."""

    model: torch.nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    heads: list[Head]
    protocol: str
    seed: int


@dataclass(frozen=True)
class Trained:
    """What a defense's own training did: the usual result, the lr it trained at, its privacy figures."""

    result: LocalTrainResult
    lr: float
    privacy: PrivacyFigures | None = None


@dataclass(frozen=True)
class Received:
    """What a client was sent for one round, before it trains on it (what ``check_received`` inspects)."""

    round: int
    user: str
    arrays: Mapping[str, npt.NDArray[Any]]  # the parameters (and buffers) as received, by name
    expected: Mapping[str, tuple[int, ...]]  # the model the client expects to get: name -> shape
    run_dir: str = ""  # the run folder where the client can reach it ("" unknown): per-run logs live there
    run_id: str = ""


@dataclass(frozen=True)
class Verdict:
    """A check's outcome on a received model: what the client reports in its reply, and whether it refuses."""

    record: Record
    refuse: bool = False


class Defense(Generic[S]):
    """One defense. Subclasses set the class attributes and override the hooks they need.

    ``section_rank`` orders the config sections (``fl-sim config show``) and the visibility notes;
    ``record_rank`` orders a user's defense record, its one-line description and the client mods.
    """

    name: str = ""
    help: str = ""  # the config section's documentation (the registry's help text)
    config_type: type[S]
    section_rank: int = 0
    record_rank: int = 0
    per_user: bool = False  # chosen per user through the section's ``users`` key (salt "<name>:<seed>")
    switches_on: frozenset[str] = frozenset()  # setting one of these keys sets ``enabled`` (unless set too)
    hides_update: bool = False  # the server never sees a single user's update (then nothing else matters)
    aggregate_only: bool = False  # rounds run through an aggregate-only server loop (Flower's legacy API)

    def section(self, run: RunView) -> S:
        """This defense's config section of ``run`` (its defaults where ``run`` was made before it was registered)."""
        value = getattr(run.defenses, self.name, None)
        if value is None:
            return self.config_type()
        if not isinstance(value, self.config_type):
            raise TypeError(f"defenses.{self.name} is a {type(value).__name__}, not a {self.config_type.__name__}")
        return value

    # -- config --------------------------------------------------------------------------
    def active(self, section: S) -> bool:
        """Whether the run uses this defense at all."""
        return bool(getattr(section, "enabled", False))

    def validate(self, section: S, run: RunView, sections: Mapping[str, Any]) -> None:
        """Raise a one-line ConfigError for a setting that cannot run (``sections``: every defense's)."""

    # -- the per-user record ---------------------------------------------------------------
    def record(self, section: S, run: RunView) -> Record:
        """This defense's entry in the record of each user who has it (stored with every update and attack)."""
        return {}

    def describe(self, rec: Record) -> str:
        """A short phrase for one line of ``inspect``, e.g. 'dp_sgd z=2 C=1'."""
        return self.name

    def visibility(self, rec: Record) -> str:
        """What the server can still see of a single update under this defense."""
        return ""

    # -- client side -----------------------------------------------------------------------
    def client_mods(self, section: S) -> list[Any]:
        """Flower mods around the client's train handler."""
        return []

    outermost_mods: bool = False  # its mods wrap every other mod (e.g. masking what they return)

    def resumed_state(self, rec: Record, last: Mapping[str, Any]) -> dict[str, str]:
        """The node state (``NodeState`` key -> text) this defense kept for a user, rebuilt from ``last``: the metrics
        of the user's last stored update. A resumed run hands it to the user's fresh node (default: none kept)."""
        return {}

    def train(self, rec: Record, batch: TrainBatch, state: NodeState) -> Trained | None:
        """Train ``batch.model`` in place under this defense (None: the run's plain training)."""
        return None

    def check_received(self, rec: Record, received: Received) -> Verdict | None:
        """Inspect the model a client received before it trains (None: this defense checks nothing). Its
        ``record`` travels back in the reply (stored with the update); ``refuse`` sends back no update."""
        return None

    def after_train(self, rec: Record, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor],
                    seed: int) -> dict[str, torch.Tensor]:
        """The weights to send, given the weights before and after training."""
        return after

    # -- server side -----------------------------------------------------------------------
    def server_wrapper(self, section: S, run: RunView) -> StrategyWrapper | None:
        """A Flower strategy wrapper put outermost around the server's strategy (None: none)."""
        return None

    def fit_workflow(self, section: S, run: RunView) -> Any:
        """For ``aggregate_only`` defenses: Flower's legacy fit workflow the rounds run through."""
        raise NotImplementedError(self.name)


DEFENSES: Parts[Defense[Any]] = Parts("defense", "defenses")  # plugins register theirs with register_defense


def register_defense(defense: Defense[S]) -> Defense[S]:
    """Register ``defense`` under its ``name`` (a plugin's own too: it gets a ``defenses.<name>`` config section)."""
    DEFENSES.add(defense.name, defense, defense.help)
    return defense
