"""Ground floor: config, errors, records, run store, data, models, face evaluators, metrics, defenses (imports nothing above it)."""

import attacks.registry


def _load_parts() -> None:
    """When the attacks library misses a name (a method, a prior), register fl-sim's parts and its plugins' first."""
    from fl_sim.core.plugins import load_pending

    load_pending()


attacks.registry.MISS_HOOKS.append(_load_parts)
