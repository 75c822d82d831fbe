"""Plugins from outside the repo: config key ``plugins``, entry points, FL_SIM_PLUGINS; the example end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fl_sim.core.errors import ConfigError
from fl_sim.core.plugins import ENV, ensure_plugins, load_entry_points, load_plugin
from fl_sim.core.store import RunStore
from tests.conftest import FL_SIM, REPO

EXAMPLE = REPO / "examples" / "my_plugin"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _fl_sim(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FL_SIM), *args], capture_output=True, text=True, env=_env(), cwd=cwd, timeout=600)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from fl_sim.core.defenses import DEFENSES

    monkeypatch.setenv(ENV, "")  # what a test's plugins leave there is undone afterwards
    # so is a plugin's defense: it would add a section to every config this process makes later
    monkeypatch.setattr(DEFENSES, "_entries", dict(DEFENSES._entries))


def test_the_example_plugins_parts_are_listed_with_their_origin(clean_env: None) -> None:
    from fl_sim.core.parts import parts_lines

    ensure_plugins([str(EXAMPLE)])
    lines = "\n".join(parts_lines())
    for name in ("tinycnn", "flatfolder", "gray", "update_clip"):
        line = next(ln for ln in lines.splitlines() if f" {name} " in ln)
        assert line.rstrip().endswith(f"[{EXAMPLE}]"), line
    assert "convnet" in lines and "[builtin]" in lines
    assert str(EXAMPLE) in os.environ[ENV].split(",")  # what the run's Ray actors import on demand


def test_config_show_documents_a_plugins_parts() -> None:
    res = _fl_sim("config", "show", "--set", f"plugins={EXAMPLE}")
    assert res.returncode == 0, res.stderr
    docs = {ln for ln in res.stdout.splitlines() if ln.startswith("# ")}
    assert any("model:" in ln and "tinycnn" in ln for ln in docs)
    assert any("dataset spec:" in ln and "flatfolder:PATH" in ln for ln in docs)
    assert any("attack methods:" in ln and "gray" in ln for ln in docs)
    assert 'plugins = ["' in res.stdout


def test_config_show_lists_every_part_with_its_origin() -> None:
    res = _fl_sim("config", "show", "--set", f"plugins={EXAMPLE}")
    assert any(" tinycnn " in ln and f"[{EXAMPLE}]" in ln for ln in res.stdout.splitlines())


def _dup_plugin(tmp_path: Path) -> Path:
    path = tmp_path / "dup_parts.py"
    path.write_text("from torch import nn\nfrom fl_sim.core.models import register_model\n\n"
                    "@register_model('convnet')\nclass Other(nn.Module):\n    pass\n")
    return path


@pytest.mark.parametrize("ref, message", [
    ("no_such_plugin_mod", "plugin 'no_such_plugin_mod': no module named 'no_such_plugin_mod'"),
    (f"{EXAMPLE}:no_such_callable", "has no callable 'no_such_callable'"),
    ("DUP", "model 'convnet' is registered twice (builtin and "),
    ("/nowhere/parts.py", "no such file or folder /nowhere/parts.py"),
])
def test_bad_plugin_references_are_one_line_config_errors(ref: str, message: str, tmp_path: Path) -> None:
    ref = str(_dup_plugin(tmp_path)) if ref == "DUP" else ref
    res = _fl_sim("config", "show", "--set", f"plugins={ref}")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, res.stderr


def test_load_plugin_errors_in_process(clean_env: None, tmp_path: Path) -> None:
    (tmp_path / "broken_parts.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    with pytest.raises(ConfigError, match=r"^plugin '.*broken_parts.py': RuntimeError: boom$"):
        load_plugin(str(tmp_path / "broken_parts.py"))
    (tmp_path / "callable_parts.py").write_text("CALLS = []\ndef setup() -> None:\n    CALLS.append(1)\n")
    mod = load_plugin(f"{tmp_path / 'callable_parts.py'}:setup")
    assert mod.CALLS == [1]
    assert load_plugin(f"{tmp_path / 'callable_parts.py'}:setup") is mod and mod.CALLS == [1]  # once per process


def test_entry_point_plugins_load_automatically(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fl_sim.core.models import MODELS

    (tmp_path / "ep_parts.py").write_text(
        "from fl_sim.core.models import MLP, register_model\nregister_model('ep-mlp', 'from an entry point')(MLP)\n")
    dist = tmp_path / "ep_parts-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-parts\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fl_sim.plugins]\nep = ep_parts\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    load_entry_points(refresh=True)
    entry = next(e for e in MODELS if e.name == "ep-mlp")
    assert entry.origin == "entry point ep (ep_parts)" and entry.help == "from an entry point"


def test_the_example_plugin_runs_end_to_end(tmp_path: Path) -> None:
    """All four parts of the plugin in one run (model, dataset, attack method, defense): the client actors and
    the attack worker (other processes) find them, the run finishes and the store records them; the chosen
    users' updates are clipped (their norms are the clip's, the others' larger) and their attacks say so."""
    faces = tmp_path / "faces"
    made = subprocess.run([sys.executable, str(EXAMPLE / "make_folder.py"), str(faces)], capture_output=True,
                          text=True, env=_env(), timeout=300)
    assert made.returncode == 0, made.stderr
    runs = tmp_path / "runs"
    res = _fl_sim("run", "--set", f"plugins={EXAMPLE}", "--set", "model.name=tinycnn", "--set",
                  f"data.dataset=flatfolder:{faces}", "--set", "rounds=1", "--set", "users=3",
                  "--set", "attack.methods=gray", "--set", "data.photos_per_user=4", "--set", "data.holdout_per_user=2",
                  "--set", "data.image_size=16", "--set", "defenses.update_clip.enabled=true",
                  "--set", "defenses.update_clip.max_norm=0.01", "--set", "defenses.update_clip.users=half",
                  "--runs-dir", str(runs))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (run_dir,) = runs.iterdir()
    store = RunStore(run_dir / "store.sqlite")
    try:
        run, users, updates, attacks = store.run(), store.users(), store.updates(), store.attacks()
    finally:
        store.close()
    assert run["status"] == "finished" and run["config"]["model"]["name"] == "tinycnn"
    assert run["config"]["plugins"] == [str(EXAMPLE)] and len(users) == 3
    assert attacks and {(a["method"], a["status"]) for a in attacks} == {("gray", "finished")}
    assert run["config"]["defenses"]["update_clip"] == {"enabled": True, "max_norm": 0.01, "noise": 0.0,
                                                         "users": "half"}
    clipped = {u["user"] for u in users if u["defenses"] == {"update_clip": {"max_norm": 0.01}}}
    assert 0 < len(clipped) < 3 and all(u["defenses"] == {} for u in users if u["user"] not in clipped)
    assert len(updates) == 3 and {u["user"] for u in updates if u["defenses"]} == clipped
    for u in updates:
        if u["user"] in clipped:
            assert u["update_norm"] == pytest.approx(0.01, rel=1e-3)
        else:
            assert u["update_norm"] > 0.02
    assert {a["user"] for a in attacks if a["defenses"]} == clipped


def test_config_show_documents_a_plugins_defense() -> None:
    """The plugin's defense has its own section: documented keys, --set works (max_norm switches it on)."""
    res = _fl_sim("config", "show", "--set", f"plugins={EXAMPLE}", "--set", "defenses.update_clip.max_norm=0.5")
    assert res.returncode == 0, res.stderr
    section = res.stdout.split("[defenses.update_clip]\n", 1)[1].split("\n[", 1)[0].splitlines()
    keys = {ln.split(" = ")[0]: ln.split(" = ")[1] for ln in section if " = " in ln and not ln.startswith("#")}
    assert keys == {"enabled": "true", "max_norm": "0.5", "noise": "0.0", "users": '"all"'}
    assert "# L2 norm the whole update is clipped to" in section
    bad = _fl_sim("config", "show", "--set", f"plugins={EXAMPLE}", "--set", "defenses.update_clip.max_norm=0")
    assert bad.returncode == 2 and "defenses.update_clip.max_norm" in bad.stderr, bad.stderr
    plain = _fl_sim("config", "show")
    assert plain.returncode == 0 and "update_clip" not in plain.stdout


ROUND_TRIP = """
import pickle, sys, tomllib
from fl_sim.core.config import from_dict, load_config, to_dict, to_toml
if sys.argv[1] == "write":
    cfg = load_config(None, ["plugins=" + sys.argv[3], "defenses.update_clip.max_norm=0.25",
                             "defenses.update_clip.users=half", "defenses.compression.topk=0.5"])
    open(sys.argv[2], "wb").write(pickle.dumps(cfg))
    open(sys.argv[2] + ".toml", "w").write(to_toml(cfg))
else:  # a fresh process, as a Ray actor: the plugin arrives through FL_SIM_PLUGINS (read) or the snapshot (toml)
    if sys.argv[1] == "read":
        cfg = pickle.loads(open(sys.argv[2], "rb").read())
    else:
        cfg = from_dict(tomllib.loads(open(sys.argv[2] + ".toml").read()))
    clip = cfg.defenses.update_clip
    assert (clip.enabled, clip.max_norm, clip.users) == (True, 0.25, "half"), clip
    assert type(clip).__module__ == "my_plugin.defense" and cfg.defenses.compression.topk == 0.5
    assert from_dict(to_dict(cfg)) == cfg and to_dict(pickle.loads(pickle.dumps(cfg))) == to_dict(cfg)
    print("ok")
"""


def test_a_plugins_defense_section_pickles_and_round_trips_across_processes(tmp_path: Path) -> None:
    """The config travels to the client actors and the attack worker pickled: the plugin's section is
    rebuilt where it lands, the plugin imported from FL_SIM_PLUGINS; the snapshot re-reads with its plugins."""
    path = tmp_path / "cfg.pkl"
    for step, env in (("write", {}), ("read", {ENV: str(EXAMPLE)}), ("toml", {})):
        res = subprocess.run([sys.executable, "-c", ROUND_TRIP, step, str(path), str(EXAMPLE)], capture_output=True,
                             text=True, env={**_env(), **env}, timeout=300)
        assert res.returncode == 0, f"{step}: {res.stderr[-2000:]}"


