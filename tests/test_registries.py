"""Registries: one per kind of part, with help texts; config choices and docs are read from them."""

from __future__ import annotations

import pytest

from fl_sim.core.config import load_config
from fl_sim.core.configkeys import documented_keys
from fl_sim.core.errors import ConfigError


def _docs() -> dict[str, str]:
    return {k: d for k, _, d in documented_keys()}


def test_every_builtin_part_has_a_help_text() -> None:
    from fl_sim.core.parts import all_parts

    builtin = [p for p in all_parts() if p.origin == "builtin"]
    assert {p.kind for p in builtin} >= {"dataset", "model", "attack", "prior"}
    assert all(p.help.strip() for p in builtin), [p.name for p in builtin if not p.help.strip()]


def test_config_docs_list_the_registered_choices() -> None:
    from attacks.methods import ATTACKS
    from attacks.priors import PRIORS
    from fl_sim.core.data import DATASETS
    from fl_sim.core.models import MODELS

    docs = _docs()
    assert all(n in docs["model.name"] for n in MODELS.names()) and "convnet" in docs["model.name"]
    assert all(n in docs["attack.methods"] for n in ATTACKS) and {"dlg", "ig", "diffusion"} <= set(ATTACKS)
    assert all(n in docs["data.dataset"] for n in DATASETS.names()) and "folder:PATH" in docs["data.dataset"]
    assert "faces32" in PRIORS and "faces32" in docs["attack.prior"]


def test_unknown_model_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model\.name.*nosuch.*convnet"):
        load_config(None, ["model.name=nosuch"])


def test_a_name_registered_twice_is_refused() -> None:
    from attacks.registry import DuplicateError, Named
    from fl_sim.core.plugins import Parts

    reg: Parts[int] = Parts("thing", "things")
    reg.add("a", 1, "one")
    with pytest.raises(ConfigError, match="'a' is registered twice"):
        reg.add("a", 2)
    named: Named[int] = Named("thing")
    named.add("a", 1)
    with pytest.raises(DuplicateError, match="'a' is registered twice"):
        named.add("a", 2)
    assert named["a"] == 1 and named.part("a").origin == "builtin"


def test_the_embedded_prior_is_registered_by_the_ground_floor() -> None:
    from fl_sim.core.assets import ASSET_ROOT
    from fl_sim.core.priors import PRIORS

    assert PRIORS["faces32"] == ASSET_ROOT / "prior-faces32" and (PRIORS["faces32"] / "manifest.json").exists()


def test_the_attacks_library_locates_no_asset_itself() -> None:
    from pathlib import Path

    import attacks

    for path in Path(attacks.__file__).parent.rglob("*.py"):
        text = path.read_text()
        assert "fl_sim" not in text.replace("fl-sim", "") or path.name == "registry.py", path
        assert ".parents[" not in text, path
