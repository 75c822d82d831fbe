"""Every registered part (datasets, models, defenses, attacks, priors) with its help text and origin, for listings."""

from __future__ import annotations

from dataclasses import dataclass

from fl_sim.core.registry import Registry


@dataclass(frozen=True)
class PartInfo:
    """One row of the listing."""

    kind: str
    key: str  # the config key that picks it
    name: str
    help: str
    origin: str  # "builtin", a plugin reference or an entry point


def _core_registries() -> list[Registry[object]]:
    """The ground floor's registries, the defenses' included wherever that module keeps them."""
    import fl_sim.core.defenses as defenses
    from fl_sim.core.adversary import TACTICS
    from fl_sim.core.data import DATASETS
    from fl_sim.core.models import MODELS

    found: list[Registry[object]] = [DATASETS, MODELS]  # type: ignore[list-item]
    found += [v for v in vars(defenses).values() if isinstance(v, Registry) and v not in found]
    found.append(TACTICS)  # type: ignore[arg-type]
    return found


def all_parts() -> list[PartInfo]:
    """Every part the registries hold now, plugins' (config ``plugins``, entry points, FL_SIM_PLUGINS) included."""
    from attacks.methods import ATTACKS
    from attacks.priors import PRIORS
    from fl_sim.core.plugins import load_pending

    load_pending()
    rows = [PartInfo(reg.kind, reg.key, e.name, e.help, e.origin) for reg in _core_registries() for e in reg]
    rows += [PartInfo("attack", "attack.methods", p.name, p.help, p.origin) for p in ATTACKS.parts()]
    rows += [PartInfo("prior", "attack.prior", p.name, p.help, p.origin) for p in PRIORS.parts()]
    return rows


def parts_lines() -> list[str]:
    """The listing as TOML comment lines, one per part, grouped by the config key that picks it."""
    rows = all_parts()
    width = max((len(r.name) for r in rows), default=0)
    out = ["# Registered parts (plugins add their own: examples/README.md)"]
    for key in dict.fromkeys(r.key for r in rows):
        group = [r for r in rows if r.key == key]
        out.append(f"# {key} ({group[0].kind}):")
        out += [f"#   {r.name:<{width}}  {r.help or '-'}  [{r.origin}]" for r in group]
    return out
