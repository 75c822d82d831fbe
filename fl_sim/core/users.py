"""The one parser for "which users": ``all | half | sample:N | comma-separated ids`` (seeded, by name)."""

from __future__ import annotations

import random

from fl_sim.core.errors import ConfigError

USERS_DOC = "who uses it: all | half | sample:N (seeded) | comma-separated user ids"


def check_user_choice(spec: str, key: str) -> None:
    """Reject a malformed choice before anything runs (ids are checked against the run's users later)."""
    if spec.startswith("sample:") and not spec[7:].isdigit():
        raise ConfigError(f"config key '{key}': expected sample:N, got {spec!r}")


def choose_users(spec: str, users: list[str], salt: str, key: str) -> list[str]:
    """The users ``spec`` names among ``users``, sorted; samples are drawn with ``salt`` over sorted names."""
    check_user_choice(spec, key)
    pool = sorted(users)
    if spec == "all":
        return pool
    if spec == "half" or spec.startswith("sample:"):
        n = len(pool) // 2 if spec == "half" else int(spec[7:])
        return sorted(random.Random(salt).sample(pool, min(n, len(pool))))
    wanted = [x.strip() for x in spec.split(",") if x.strip()]
    missing = [x for x in wanted if x not in pool]
    if missing:
        raise ConfigError(f"config key '{key}': no user(s) {', '.join(missing)} in this run")
    return sorted(wanted)
