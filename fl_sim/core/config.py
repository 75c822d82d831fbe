"""The one typed run configuration: TOML file + `--set key=value` overrides, validated at the door."""

from __future__ import annotations

import dataclasses
import math
import random
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, get_type_hints

from fl_sim.core.adversary import AdversaryConfig, validate_adversary
from fl_sim.core.defenses import apply_implied, validate_defenses
from fl_sim.core.defenses import sections as defense_sections
from fl_sim.core.errors import ConfigError
from fl_sim.core.fields import _f, doc, doc_text
from fl_sim.core.preflight import check_attack_prior, check_model
from fl_sim.core.users import check_user_choice, choose_users


def _listing(kind: str) -> str:
    """``name (help) | ...`` for every registered part of ``kind`` (model, attack, prior); datasets by spec form."""
    from attacks.methods import ATTACKS
    from attacks.priors import PRIORS
    from fl_sim.core.data import DATASETS
    from fl_sim.core.models import MODELS
    from fl_sim.core.plugins import load_pending

    load_pending()
    if kind == "dataset":
        return " | ".join(e.help.split(" — ")[0] if " — " in e.help else f"{e.name}[:ARG]" for e in DATASETS)
    if kind == "attack":
        return " | ".join(ATTACKS.names())
    parts = [(e.name, e.help) for e in MODELS] if kind == "model" else [(p.name, p.help) for p in PRIORS.parts()]
    return " | ".join(f"{name} ({help})" if help else name for name, help in parts)


@dataclass
class DataConfig:
    """Where the users' photos come from."""

    dataset: str = _f("synthfaces", lambda: f"dataset spec: {_listing('dataset')}")
    image_size: int = _f(32, "side of the square images fed to the model (pixels)", min=8, max=256)
    photos_per_user: int = _f(32, "training photos each user holds (their local batch)", min=1)
    holdout_per_user: int = _f(8, "held-out photos per user, for utility (accuracy) only", min=1)
    min_photos_per_user: int = _f(0, "skip users with fewer photos than this (0: photos_per_user + holdout_per_user)", min=0)


@dataclass
class ModelConfig:
    """The shared model."""

    name: str = _f("convnet", lambda: f"model: {_listing('model')}")
    # 16, not 32: with per-user constant labels, wider 4x4-pooled features made local SGD
    # diverge at any lr that still learned in a few rounds (docs/BENCHMARKS.md, demo tuning).
    width: int = _f(16, "channels (convnet, resnet) or hidden units / 8 (mlp)", min=1, max=1024)
    norm: str = _f("group", "normalisation layers: group (GroupNorm) | batch (BatchNorm; refused under DP-SGD)",
                   choices=("group", "batch"))


@dataclass
class SimulationConfig:
    """Flower Simulation Engine (Ray backend) settings."""

    client_cpus: float = _f(1.0, "CPUs reserved per client actor", min=0.0)
    client_gpus: float = _f(0.0, "GPUs (fraction) reserved per client actor", min=0.0)
    torch_threads: int = _f(1, "torch intra-op threads inside each client actor", min=1)
    ray_num_cpus: int = _f(0, "CPUs Ray may use (0: all of this machine's)", min=0)
    pull_interval_s: float = _f(0.01, "how often the server polls the simulation for replies (Flower's default: 0.1)",
                                min_exclusive=0.0)
    ray_address: str = _f("", "empty: start a private Ray for the run | an existing Ray cluster to run on (host:port "
                              "of its GCS, auto, or ray://host:10001): the run attaches, then only disconnects")


@dataclass
class AttackPolicyConfig:
    """The curious server: which rounds, users and methods it attacks, and its worker."""

    enabled: bool = _f(True, "attack client updates during the run (the curious server)")
    methods: list[str] = _f(["ig", "diffusion"], lambda: f"attack methods: {_listing('attack')}")
    rounds: list[int] = _f([], "rounds to attack (empty: see every)")
    every: int = _f(5, "attack every k-th round when 'rounds' is empty (5: rounds 1, 6, 11, ...)", min=1)
    users: str = _f("all", "users to attack: all | half | sample:N (seeded) | comma-separated user ids")
    iterations: int = _f(0, "optimisation iterations per attack (0: each method's measured default at "
                            "data.image_size, 400 at 32x32 and 800 at 64x64)", min=0)
    prior: str = _f("auto", lambda: f"diffusion prior: auto (the embedded one at data.image_size) | {_listing('prior')} "
                                     "| diffusers folder | hub id")
    queue_size: int = _f(8, "attack jobs in flight before the queue is full", min=1)
    when_full: str = _f("wait", "full queue: wait for a slot | drop the job (recorded as dropped)",
                        choices=("wait", "drop"))
    worker_cpus: float = _f(0.0, "CPUs reserved for the attack worker (0 on a CPU host: it runs at low priority beside the clients, whose actor pool takes every CPU Ray has)", min=0.0)
    worker_gpus: float = _f(0.0, "GPUs (fraction) for the attack worker actor; on a GPU its attacks run there", min=0.0)
    worker_resource: str = _f("", "a custom Ray resource (e.g. attack_worker) the worker asks 1 of: Ray places it on "
                                  "the node started with --resources '{\"attack_worker\": 1}'")
    ray_address: str = _f("", "empty: the run's own Ray (a simulation's) | the Ray cluster the server connects to for "
                              "its worker when its process has none (Deployment Engine): host:port, auto, ray://...")
    drain_timeout_s: float = _f(1800.0, "at the end, wait this long for attacks; the rest are 'unfinished'", min=0.0)


class _Defenses:
    """What every assembled ``DefensesConfig`` shares: it travels (pickled, to the client actors and the attack
    worker) as plain values and is rebuilt where it lands from that process's registry, whose pending plugins
    (FL_SIM_PLUGINS, entry points) are imported first; so a plugin's section needs no importable class path."""

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        return _defenses_from_dict, (dataclasses.asdict(self),)  # type: ignore[call-overload]


_DEFENSES_CLASSES: dict[tuple[str, ...], type] = {}  # the section's class per set of registered defenses


def defenses_config(pending: bool = True) -> type:
    """The ``defenses`` section's class: one sub-section per registered defense (plugins' too), documented by its
    registry help text; one class per set of defenses (the built-in ones: ``DefensesConfig``)."""
    found = defense_sections(pending)
    key = tuple(d.name for d in found)
    if key not in _DEFENSES_CLASSES:
        fields = [(d.name, d.config_type, field(default_factory=d.config_type, metadata=doc(d.help))) for d in found]
        cls = dataclasses.make_dataclass("DefensesConfig", fields, bases=(_Defenses,))
        cls.__module__ = __name__
        cls.__doc__ = "Client defenses, each of which can be toggled per run (and per user where it is client-side)."
        _DEFENSES_CLASSES[key] = cls
    return _DEFENSES_CLASSES[key]


def _new_defenses() -> Any:
    """A ``defenses`` section with every defense registered now, at its defaults."""
    return defenses_config()()


def _defenses_from_dict(values: dict[str, Any]) -> Any:
    """A pickled ``defenses`` section, rebuilt with the values as they were (a plugin's defense is found through
    the pending plugins; a name still unknown is a one-line error)."""
    section = _new_defenses()
    _restore(section, values, "defenses.")
    return section


def _restore(obj: Any, values: dict[str, Any], prefix: str) -> None:
    """Set ``values`` (``dataclasses.asdict`` of an object like ``obj``) as they are: no coercion, no checks."""
    fields = {f.name for f in dataclasses.fields(obj)}
    for name, value in values.items():
        if name not in fields:
            raise ConfigError(f"unknown config key '{prefix}{name}' (is the plugin that registers it loaded?)")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            _restore(current, value, f"{prefix}{name}.")
        else:
            setattr(obj, name, value)


if TYPE_CHECKING:
    DefensesConfig: TypeAlias = Any  # built from the defense registry
else:
    DefensesConfig = defenses_config(pending=False)  # the built-in defenses' (the config's module imports no plugin)


@dataclass
class RunConfig:
    """A federation: who takes part, what they train, how the server aggregates."""

    seed: int = _f(0, "seed for user sampling, model init and local shuffling", min=0)
    users: int = _f(8, "number of users (one Flower client each)", min=1)
    rounds: int = _f(6, "federated rounds", min=1)
    protocol: str = _f("fedavg", "fedsgd: one full-batch gradient step | fedavg: local epochs of mini-batch SGD",
                       choices=("fedsgd", "fedavg"))
    task: str = _f("auto", "auto: attributes where the data has gender/age labels, else identity (the run says "
                           "which) | attributes: gender + age-band heads | identity: one class per user (needs users >= 2: "
                           "one class has nothing to learn, refused)",
                   choices=("auto", "attributes", "identity"))
    lr: float = _f(0.01, "client learning rate (eta)", min_exclusive=0.0)
    local_epochs: int = _f(1, "FedAvg: local epochs per round", min=1)
    local_batch_size: int = _f(8, "FedAvg: mini-batch size of local SGD", min=1)
    clients_per_round: float = _f(1.0, "clients per round: a fraction in (0, 1] or a count > 1", min_exclusive=0.0)
    utility_eval: str = _f("harness", "held-out accuracy per round: harness (the simulator evaluates every user's "
                                      "held-out photos; same numbers, no extra message round) | clients (Flower's "
                                      "federated evaluation)", choices=("harness", "clients"))
    utility_users: int = _f(0, "harness: held-out accuracy of this many users (one seeded sample, every round; 0: all)",
                            min=0)
    plugins: list[str] = _f([], "plugins imported before validation, to register datasets, models, defenses, attacks "
                                "and priors: module names, module:callable, or paths (with a /) to a .py file or "
                                "package folder (examples/README.md)")
    data: DataConfig = field(default_factory=DataConfig, metadata=doc("dataset"))
    model: ModelConfig = field(default_factory=ModelConfig, metadata=doc("model"))
    simulation: SimulationConfig = field(default_factory=SimulationConfig, metadata=doc("simulation engine"))
    attack: AttackPolicyConfig = field(default_factory=AttackPolicyConfig, metadata=doc("curious server"))
    defenses: DefensesConfig = field(default_factory=_new_defenses, metadata=doc("client defenses"))
    adversary: AdversaryConfig = field(default_factory=AdversaryConfig, metadata=doc("malicious server"))

    def clients_in_round(self) -> int:
        """How many clients each round samples."""
        if self.clients_per_round <= 1.0:
            return max(1, int(round(self.users * self.clients_per_round)))
        return int(self.clients_per_round)

    def attacked_round(self, server_round: int) -> bool:
        """Whether the curious server attacks ``server_round``."""
        a = self.attack
        if not a.enabled:
            return False
        return server_round in a.rounds if a.rounds else (server_round - 1) % a.every == 0

    def attacked_users(self, users: list[str]) -> list[str]:
        """The users the curious server attacks (a seeded sample is the same every round)."""
        return choose_users(self.attack.users, users, f"attack:{self.seed}", "attack.users")

    def round_users(self, users: list[str], server_round: int) -> list[str]:
        """The users trained in ``server_round``: a function of (seed, round) over user names.

        Sampling names rather than Flower's random node ids keeps two runs with one seed alike.
        """
        pool = sorted(users)
        n = self.clients_in_round()
        if n >= len(pool):
            return pool
        return sorted(random.Random(f"{self.seed}:{server_round}").sample(pool, n))

    def utility_sample(self, users: list[str]) -> list[str]:
        """The users whose held-out accuracy is the run's utility: all, or ``utility_users`` of them by the seed."""
        spec = f"sample:{self.utility_users}" if self.utility_users else "all"
        return choose_users(spec, users, f"utility:{self.seed}", "utility_users")


def is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _base_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Value of the declared type, from a TOML value or a --set string."""
    tp = _base_type(tp)
    if isinstance(value, str) and tp is not str:
        text = value.strip()
        try:
            if tp is bool:
                if text.lower() in ("true", "1", "yes", "on"):
                    return True
                if text.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            if tp is int:
                return int(text)
            if tp is float:
                return float(text)
            if typing.get_origin(tp) is list:
                (inner,) = typing.get_args(tp)
                return [_coerce(key, inner, v) for v in text.split(",") if v.strip()] if text else []
        except ValueError:
            raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}") from None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_coerce(key, inner, v) for v in value]
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    return value


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _check(key: str, meta: dict[str, Any], value: Any) -> None:
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(meta['choices'])}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}': must be a finite number, got {value}")
        if "min" in meta and value < meta["min"]:
            raise ConfigError(f"config key '{key}': must be >= {meta['min']}, got {value}")
        if "max" in meta and value > meta["max"]:
            raise ConfigError(f"config key '{key}': must be <= {meta['max']}, got {value}")
        if "min_exclusive" in meta and value <= meta["min_exclusive"]:
            raise ConfigError(f"config key '{key}': must be > {meta['min_exclusive']}, got {value}")


def _apply(obj: Any, values: dict[str, Any], prefix: str) -> None:
    hints = get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise ConfigError(f"unknown config key '{key}' (fl-sim config show lists them)")
        tp = hints[name]
        if is_section(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{key}' is a section; set its keys, e.g. '{key}.{dataclasses.fields(tp)[0].name}'")
            _apply(getattr(obj, name), value, f"{key}.")
        else:
            coerced = _coerce(key, tp, value)
            _check(key, dict(fields[name].metadata), coerced)
            setattr(obj, name, coerced)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`a.b=v` strings -> nested dict of raw string values."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{key}' conflicts with another --set")
        node[parts[-1]] = value
    return out


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the TOML file, then the overrides; every value checked."""
    sources: list[dict[str, Any]] = []
    if path is not None:
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            sources.append(tomllib.loads(path.read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    sources.append(parse_overrides(overrides or []))
    cfg = _with_plugins(sources)
    for values in sources:
        _apply(cfg, values, "")
        _implied(cfg, values)
    from fl_sim.core.priors import resolve_prior

    cfg.attack.prior = resolve_prior(cfg.attack.prior, cfg.data.image_size)  # the run records which prior
    validate(cfg)
    return cfg


def _with_plugins(sources: list[dict[str, Any]]) -> RunConfig:
    """A default config once the plugins ``sources`` name (the last one that names any wins) are imported:
    before the other keys are read, so a plugin's defense has its ``defenses.<name>`` section and the plugins'
    parts are valid choices when the config is validated."""
    from fl_sim.core.plugins import ensure_plugins

    probe = RunConfig()
    for values in sources:
        if "plugins" in values:
            _apply(probe, {"plugins": values["plugins"]}, "")
    ensure_plugins(probe.plugins)
    probe.defenses = _new_defenses()  # the plugins' defenses included
    return probe


def _implied(cfg: RunConfig, values: dict[str, Any]) -> None:
    """Setting a defense parameter turns it on (e.g. DP-SGD's), unless the same source sets ``enabled`` itself."""
    apply_implied(cfg, values)


def validate(cfg: RunConfig) -> None:
    """Checks that involve more than one key."""
    from attacks.methods import ATTACKS
    from fl_sim.core.models import MODELS

    MODELS.get(cfg.model.name)  # a ConfigError naming model.name and the known models
    unknown = [m for m in cfg.attack.methods if m not in ATTACKS]
    if unknown:
        raise ConfigError(f"config key 'attack.methods': unknown method(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(ATTACKS))})")
    bad_rounds = [r for r in cfg.attack.rounds if not 1 <= r <= cfg.rounds]
    if bad_rounds:
        raise ConfigError(f"config key 'attack.rounds': {bad_rounds} outside 1..{cfg.rounds}")
    check_user_choice(cfg.attack.users, "attack.users")
    if cfg.attack.enabled and not cfg.attack.methods:
        raise ConfigError("config key 'attack.methods': empty while attack.enabled=true (name a method, "
                          "or set attack.enabled=false)")
    if cfg.attack.enabled and cfg.attack.users.strip() == "sample:0":
        raise ConfigError("config key 'attack.users': sample:0 attacks nobody (sample:N needs N >= 1, "
                          "or set attack.enabled=false)")
    if cfg.clients_per_round > 1.0 and cfg.clients_per_round != int(cfg.clients_per_round):
        raise ConfigError(f"config key 'clients_per_round': a count must be whole, got {cfg.clients_per_round}")
    if cfg.clients_in_round() > cfg.users:
        raise ConfigError(f"config key 'clients_per_round': {cfg.clients_in_round()} clients per round but only {cfg.users} users")
    if cfg.utility_users and cfg.utility_eval != "harness":
        raise ConfigError("config key 'utility_users': only with utility_eval=harness (clients: every client)")
    validate_defenses(cfg)
    validate_adversary(cfg)
    check_attack_prior(cfg.attack)
    check_model(cfg.model, cfg.data.image_size, cfg.seed)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """The config ``to_dict`` wrote (a run's snapshot), its plugins imported first."""
    cfg = _with_plugins([data])
    _apply(cfg, data, "")
    return cfg


def to_toml(cfg: Any, prefix: str = "") -> str:
    """TOML text of a config, each key preceded by its documentation."""
    scalars, sections = [], []
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if is_section(hints[f.name]):
            sections.append(f"\n[{prefix}{f.name}]\n" + to_toml(value, f"{prefix}{f.name}."))
        else:
            scalars.append(f"# {doc_text(f.metadata)}\n{f.name} = {_toml_value(value)}")
    return "\n".join(scalars) + "".join(sections)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)
