"""docker-compose.yml, Dockerfile, .dockerignore and deploy/: checked without a Docker daemon.

Every command a service runs must exist in the pinned packages and accept the flags it is given (read from
each command's own --help), ports publish on 127.0.0.1 only, the GPU goes to the attack worker only, images
agree with the flwr pin, and the wiring (SuperNode <-> SuperExec, users, Ray address, runs volume) is
consistent. `docker compose config` runs when a compose binary is on PATH.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DEPLOY_TOML = REPO / "deploy" / "compose.toml"
FLWR_CONFIG = REPO / "deploy" / "flwr-config.toml"
BIN = Path(sys.executable).parent
QUIET_ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "COLUMNS": "200",
             "RAY_USAGE_STATS_ENABLED": "0"}

# Flower's images: their entrypoint is the console script of the same name.
FLOWER_IMAGES = {"flwr/superlink": "flower-superlink", "flwr/supernode": "flower-supernode",
                 "flwr/superexec": "flower-superexec"}
PROJECT_IMAGE = "fl-sim"


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _flwr_pin() -> str:
    deps = _pyproject()["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := re.fullmatch(r"flwr(?:\[[^\]]*\])?==([\w.]+)", d.strip()))]
    assert len(pins) == 1, f"expected one exact flwr pin in pyproject, found {pins}"
    return pins[0]


@functools.cache
def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "compose file has no services"
    return data


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _dockerfile_lines() -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _dockerfile(instruction: str) -> list[str]:
    return [ln.split(None, 1)[1] for ln in _dockerfile_lines() if ln.split(None, 1)[0].upper() == instruction]


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _image_repo(svc: dict[str, Any]) -> str:
    return str(svc["image"]).rsplit(":", 1)[0]


def _argv(svc: dict[str, Any]) -> list[str]:
    """What the container runs: entrypoint (the service's, else the image's) + command."""
    if "entrypoint" in svc:
        entry = _as_list(svc["entrypoint"])
    elif _image_repo(svc) in FLOWER_IMAGES:
        entry = [FLOWER_IMAGES[_image_repo(svc)]]
    else:
        (entry_json,) = _dockerfile("ENTRYPOINT")
        entry = json.loads(entry_json)
    return entry + _as_list(svc.get("command"))


def _opt(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, f"{flag} given {argv.count(flag)} times in {argv}"
    return argv[argv.index(flag) + 1]


def _console_scripts(*dists: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in dists:
        for ep in md.distribution(dist).entry_points:
            if ep.group == "console_scripts":
                out[ep.name] = ep.value
    return out


@functools.cache
def _help_options(command: tuple[str, ...]) -> dict[str, tuple[bool, tuple[str, ...]]]:
    """``--flag -> (takes a value, allowed choices)`` from the command's --help (argparse or click)."""
    exe = BIN / command[0]
    assert exe.exists(), f"{command[0]} not installed in {BIN}"
    res = subprocess.run([str(exe), *command[1:], "--help"], capture_output=True, text=True, env=QUIET_ENV,
                         timeout=120)
    assert res.returncode == 0, f"{' '.join(command)} --help failed: {res.stderr[-500:]}"
    opts: dict[str, tuple[bool, tuple[str, ...]]] = {}
    line_re = re.compile(r"^\s+(?:-\w, )?(--[a-z0-9][a-z0-9-]*)(?: ([A-Z][A-Z_0-9]*|\{[^}]*\}|\[[^\]]*\]))?(?=\s|,|$)")
    for line in res.stdout.splitlines():
        if m := line_re.match(line):
            metavar = m.group(2) or ""
            choices = tuple(re.split(r"[,|]", metavar[1:-1])) if metavar[:1] in "{[" and metavar else ()
            opts[m.group(1)] = (bool(metavar), choices)
    assert len(opts) > 3, f"could not read the options of {' '.join(command)} --help"
    return opts


def _check_flags(command: tuple[str, ...], args: list[str]) -> list[str]:
    """Problems with ``args`` as ``command``'s --help describes it (unknown flag, missing value, bad choice)."""
    opts = _help_options(command)
    problems, i = [], 0
    while i < len(args):
        flag = args[i]
        if flag not in opts:
            problems.append(f"{' '.join(command)}: {flag!r} is not an option of this version")
            i += 1
            continue
        takes_value, choices = opts[flag]
        if takes_value:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                problems.append(f"{' '.join(command)}: {flag} needs a value")
            elif choices and args[i + 1] not in choices:
                problems.append(f"{' '.join(command)}: {flag} {args[i + 1]!r} not in {choices}")
            i += 2
        else:
            i += 1
    return problems


def _supernodes() -> dict[str, list[str]]:
    return {n: _argv(s) for n, s in _services().items() if _image_repo(s) == "flwr/supernode"}


def _superlink_port() -> str:
    (link,) = [_argv(s) for s in _services().values() if _image_repo(s) == "flwr/superlink"]
    return _opt(link, "--port")


def _attack_worker() -> list[str]:
    return _argv(_services()["attack-worker"])


# --- parsing and commands -------------------------------------------------------------------------------------


def test_compose_parses_and_has_the_topology():
    names = set(_services())
    assert {"superlink", "superexec-serverapp", "attack-worker"} <= names
    assert len(_supernodes()) == 3, "one SuperNode per user, three users"
    for node in _supernodes():
        i = node.rsplit("-", 1)[1]
        assert f"superexec-clientapp-{i}" in names, f"{node} has no ClientApp SuperExec"
    assert "runs" in (_compose().get("volumes") or {}), "no named volume for the run store"


def test_every_command_is_an_installed_entry_point_or_module():
    flower = _console_scripts("flwr")
    project = {**flower, **_console_scripts("ray"), **_console_scripts("fl-sim")}
    for name, svc in _services().items():
        argv = _argv(svc)
        assert argv, f"{name}: runs nothing"
        repo = _image_repo(svc)
        if repo in FLOWER_IMAGES:
            assert argv[0] in flower, f"{name}: {argv[0]} is not a console script of flwr {md.version('flwr')}"
            assert argv[0] == FLOWER_IMAGES[repo], f"{name}: {repo} runs {FLOWER_IMAGES[repo]}, not {argv[0]}"
        else:
            assert repo == PROJECT_IMAGE, f"{name}: unexpected image {svc['image']}"
            if argv[0] in ("python", "python3") and argv[1:2] == ["-m"]:
                assert importlib.util.find_spec(argv[2]) is not None, f"{name}: no module {argv[2]}"
            else:
                assert argv[0] in project, f"{name}: {argv[0]} is no console script of flwr, ray or fl-sim"


def test_flags_are_accepted_by_each_commands_help():
    problems: list[str] = []
    for name, svc in _services().items():
        argv = _argv(svc)
        if argv[0].startswith("flower-"):
            problems += [f"{name}: {p}" for p in _check_flags((argv[0],), argv[1:])]
        elif argv[:2] == ["ray", "start"]:
            problems += [f"{name}: {p}" for p in _check_flags(("ray", "start"), argv[2:])]
    assert not problems, "\n".join(problems)


def test_flag_check_catches_old_flag_names():
    """The check itself: Flower <= 1.2x's flags (hidden or refused in 1.41) must not pass."""
    assert _check_flags(("flower-superexec",), ["--plugin-type", "serverapp"])
    assert _check_flags(("flower-supernode",), ["--clientappio-api-address", "0.0.0.0:9094"])
    assert _check_flags(("flower-superlink",), ["--isolation", "thread"])
    assert _check_flags(("flower-superlink",), ["--port"])
    assert not _check_flags(("flower-superlink",), ["--insecure", "--isolation", "process"])


# --- exposure and resources ----------------------------------------------------------------------------------


def _ports(svc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host ip, host port, container port) of each published port, short or long syntax."""
    out = []
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            out.append((str(p.get("host_ip", "")), str(p.get("published", "")), str(p["target"])))
        else:
            parts = str(p).split("/")[0].split(":")
            ip = parts[0] if len(parts) == 3 else ""
            out.append((ip, parts[-2] if len(parts) >= 2 else "", parts[-1]))
    return out


def test_every_published_port_binds_loopback_only():
    published = {n: _ports(s) for n, s in _services().items() if s.get("ports")}
    bad = [(n, p) for n, ps in published.items() for p in ps if p[0] != "127.0.0.1"]
    assert not bad, f"published beyond 127.0.0.1: {bad}"
    assert list(published) == ["superlink"], f"only the SuperLink publishes a port: {list(published)}"
    assert published["superlink"] == [("127.0.0.1", "9093", _superlink_port())]


def test_gpu_is_reserved_for_the_attack_worker_only():
    def gpus(svc: dict[str, Any]) -> list[dict[str, Any]]:
        devices = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")
        return [d for d in devices or [] if "gpu" in (d.get("capabilities") or [])]

    holders = {n: gpus(s) for n, s in _services().items() if gpus(s) or s.get("runtime") == "nvidia"
               or s.get("gpus")}
    assert list(holders) == ["attack-worker"], f"GPU reserved by {list(holders)}"
    (dev,) = holders["attack-worker"]
    assert dev.get("driver") == "nvidia" and dev.get("count") == 1 and dev["capabilities"] == ["gpu"]
    assert _opt(_attack_worker(), "--num-gpus") == "1"


# --- versions and image --------------------------------------------------------------------------------------


def test_images_agree_with_the_flwr_pin():
    pin = _flwr_pin()
    assert md.version("flwr") == pin, f"installed flwr {md.version('flwr')} != pyproject pin {pin}"
    for name, svc in _services().items():
        repo, _, tag = str(svc["image"]).rpartition(":")
        if repo in FLOWER_IMAGES:
            assert tag == pin, f"{name}: {svc['image']} but pyproject pins flwr=={pin}"
        else:
            assert svc.get("build"), f"{name}: the project image must be built from the Dockerfile"
    (base,) = _dockerfile("FROM")
    repo, _, tag = base.partition(":")
    py = re.search(r">=\s*(3\.\d+)", _pyproject()["project"]["requires-python"]).group(1)
    assert repo == "flwr/superexec", base
    assert tag.startswith(f"{pin}-py{py}-"), f"FROM {base}: want flwr {pin} on Python {py} (requires-python)"


def test_dockerfile_installs_the_project_with_its_assets():
    copied = " ".join(_dockerfile("COPY"))
    for part in ("pyproject.toml", "fl_sim", "clients", "server", "attacks", "deploy/compose.toml"):
        assert re.search(rf"(^|\s){re.escape(part)}(\s|$)", copied), f"Dockerfile copies no {part}"
    runs = " ".join(_dockerfile("RUN"))
    assert re.search(r"pip install [^&]*/tmp/fl-sim", runs), "the project is not pip-installed"
    assert "ASSET_ROOT" in runs, "the build does not check that the assets were installed"
    assert _dockerfile("ENTRYPOINT") == ['["flower-superexec"]']
    env = " ".join(_dockerfile("ENV"))
    for var in ("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1", "FLWR_TELEMETRY_ENABLED=0"):
        assert var in env, f"Dockerfile does not set {var}"


def test_package_data_carries_every_asset():
    """`pip install .` in the image must ship fl_sim/assets (they are not downloaded at run time)."""
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["fl_sim"]
    pkg = REPO / "fl_sim"
    shipped = {p for pat in patterns for p in pkg.glob(pat) if p.is_file()}
    assets = {p for p in (pkg / "assets").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert assets, "no fl_sim/assets"
    missing = sorted(str(p.relative_to(REPO)) for p in assets - shipped)
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def test_dockerignore_keeps_local_state_out_and_the_project_in():
    patterns = [ln.strip().rstrip("/").lstrip("/") for ln in DOCKERIGNORE.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for must in (".venv", "runs", ".cache"):
        assert must in patterns, f".dockerignore does not exclude {must}"
    kept = ["pyproject.toml", "README.md", "fl_sim/assets/synthfaces/users.zip", "deploy/compose.toml",
            "attacks/__init__.py", "clients/__init__.py", "server/__init__.py"]
    from fnmatch import fnmatch
    for path in kept:
        hits = [p for p in patterns if not p.startswith("!") and
                any(fnmatch(path, g) or fnmatch(path, g + "/*") for g in (p, p.replace("**/", "")))]
        assert not hits, f".dockerignore {hits} would drop {path}"


def test_services_set_flower_environment():
    for name, svc in _services().items():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        assert str(env.get("FLWR_TELEMETRY_ENABLED")) == "0", f"{name}: telemetry not disabled"
        assert str(env.get("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION")) == "1", f"{name}: may pip/uv at run time"


# --- wiring ----------------------------------------------------------------------------------------------------


def test_each_supernode_is_one_user_with_its_own_clientapp_superexec():
    link = f"superlink:{_superlink_port()}"
    nodes = _supernodes()
    seen = []
    for node, argv in nodes.items():
        assert _opt(argv, "--superlink") == link, f"{node} does not reach the SuperLink at {link}"
        assert _opt(argv, "--isolation") == "process"
        assert _opt(argv, "--host") == "0.0.0.0", f"{node}: its Runtime API must be reachable on the network"
        cfg = dict(kv.split("=", 1) for kv in shlex.split(_opt(argv, "--node-config")))
        assert int(cfg["num-partitions"]) == len(nodes), f"{node}: num-partitions != {len(nodes)} SuperNodes"
        seen.append(int(cfg["partition-id"]))
        i = node.rsplit("-", 1)[1]
        superexec = _argv(_services()[f"superexec-clientapp-{i}"])
        assert _opt(superexec, "--runtime-api-address") == f"{node}:{_opt(argv, '--port')}"
    assert sorted(seen) == list(range(len(nodes))), f"partition ids {seen}"
    server = _argv(_services()["superexec-serverapp"])
    assert _opt(server, "--runtime-api-address") == link
    (superlink,) = [_argv(s) for s in _services().values() if _image_repo(s) == "flwr/superlink"]
    assert _opt(superlink, "--isolation") == "process" and _opt(superlink, "--host") == "0.0.0.0"


def test_runs_volume_is_shared_by_the_serverapp_and_the_worker_at_one_path():
    def runs_mounts(svc: dict[str, Any]) -> list[str]:
        out = []
        for v in svc.get("volumes") or []:
            src, target = (v.get("source"), v.get("target")) if isinstance(v, dict) else str(v).split(":")[:2]
            if src == "runs":
                out.append(target)
        return out

    server, worker = runs_mounts(_services()["superexec-serverapp"]), runs_mounts(_services()["attack-worker"])
    assert server and server == worker, f"runs mounted at {server} (ServerApp) and {worker} (worker)"
    documented = re.findall(r'runs-dir="([^"]+)"', COMPOSE.read_text())
    assert documented and set(documented) == set(server), f"the flwr run command's runs-dir {documented} != {server}"
    assert any(f"mkdir -p {server[0]}" in r for r in _dockerfile("RUN")), "the image does not create the mount point"
    assert "runs-dir" in _pyproject()["tool"]["flwr"]["app"]["config"]


def test_deploy_config_matches_the_services():
    data = tomllib.loads(DEPLOY_TOML.read_text())
    assert data["users"] == len(_supernodes()), "users != number of SuperNodes"
    attack = data["attack"]
    worker = _attack_worker()
    assert attack["ray_address"] == f"ray://attack-worker:{_opt(worker, '--ray-client-server-port')}"
    resources = json.loads(_opt(worker, "--resources"))
    assert resources == {attack["worker_resource"]: 1}
    assert float(attack["worker_gpus"]) == float(_opt(worker, "--num-gpus"))
    assert "config-file=\"/app/deploy/compose.toml\"" in COMPOSE.read_text()


def test_deploy_config_validates(tmp_path):
    """Every key fl-sim knows today; attack.ray_address / worker_resource once that change has merged."""
    from fl_sim.core.config import AttackPolicyConfig, load_config

    data = tomllib.loads(DEPLOY_TOML.read_text())
    known = {f for f in AttackPolicyConfig.__dataclass_fields__}
    pending = {k for k in data["attack"] if k not in known}
    assert pending <= {"ray_address", "worker_resource"}, f"unknown attack keys {pending}"
    path = DEPLOY_TOML
    if pending:
        data["attack"] = {k: v for k, v in data["attack"].items() if k in known}
        path = tmp_path / "compose.toml"
        path.write_text("users = {users}\n[attack]\n{rest}\n".format(
            users=data["users"], rest="\n".join(f"{k} = {json.dumps(v)}" for k, v in data["attack"].items())))
    cfg = load_config(path)
    assert cfg.users == len(_supernodes()) and cfg.attack.worker_gpus == 1.0


def test_flwr_cli_connection_reaches_the_published_superlink(tmp_path, monkeypatch):
    from flwr.cli.flower_config import read_superlink_connection

    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    shutil.copy(FLWR_CONFIG, tmp_path / "config.toml")
    conn = read_superlink_connection()
    assert conn.name == "fl-sim-compose"
    (ip, host_port, _), = _ports(_services()["superlink"])
    assert conn.address == f"{ip}:{host_port}" and conn.insecure
    assert "flwr run . fl-sim-compose" in COMPOSE.read_text()


def test_fab_does_not_hide_the_installed_assets(tmp_path):
    """Under `flwr run`, the FAB's copy of fl_sim is first on sys.path; the FAB holds no .zip/.safetensors
    (Flower's include list), so fl_sim.core.assets must still find the assets the image installed."""
    env = {**QUIET_ENV, "FLWR_HOME": str(tmp_path / "home")}
    res = subprocess.run([str(BIN / "flwr"), "build", "--app", str(REPO)], cwd=tmp_path, capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-1000:] + res.stderr[-1000:]
    (fab,) = tmp_path.glob("*.fab")
    app = tmp_path / "app"
    import zipfile
    zipfile.ZipFile(fab).extractall(app)
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import fl_sim.core.assets as a; "
             "print(a.__file__); print((a.ASSET_ROOT / 'synthfaces' / 'users.zip').is_file())")
    out = subprocess.run([sys.executable, "-c", probe, str(app)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    where, found = out.stdout.split()
    assert found == "True", (f"the FAB's fl_sim ({where}) shadows the installed one and has no users.zip: "
                             "keep fab-include in [tool.flwr.app] free of the packages")


# --- the real parser ---------------------------------------------------------------------------------------------


def _compose_binary() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_accepts_the_file():
    cmd = _compose_binary()
    if cmd is None:
        pytest.skip("neither `docker compose` nor `docker-compose` on PATH (Debian: apt-get install docker-compose)")
    # Debian's docker-compose is a system-Python program: keep this process's venv (and any PYTHONPATH that Ray
    # or Flower set while other tests ran) out of its imports.
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    res = subprocess.run([*cmd, "-f", str(COMPOSE), "config", "-q"], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0, f"{' '.join(cmd)} config -q: {res.stderr[-2000:]}"
