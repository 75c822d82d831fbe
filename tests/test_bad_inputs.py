"""Bad inputs, table-driven: each is refused before work starts.

For every case: exit code 2, exactly one line on stderr naming the key or the file, no traceback,
and no run folder. The CLI runs in-process (``fl_sim.cli.main``); the federation itself is replaced
by a tripwire, so a case that slipped through validation fails fast instead of starting Ray.
One case runs the real console entry point in a subprocess (the prior path of issue #15).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conftest import REPO, make_face_folder
from fl_sim.core.configkeys import key_bounds

# Small runs, so a folder of a few photos per user is enough.
SMALL = ["users=2", "rounds=1", "data.photos_per_user=2", "data.holdout_per_user=1"]


@dataclass(frozen=True)
class Case:
    id: str
    # tmp -> (argv after `fl-sim`, a text stderr must contain)
    make: Callable[[Path], tuple[list[str], str]]


def _run(tmp: Path, *sets: str) -> list[str]:
    return ["run", "--runs-dir", str(tmp / "runs"), *[a for s in sets for a in ("--set", s)]]


# -- every config key with a bound, from the config's own metadata --------------------------------
def _bound_cases() -> list[Case]:
    cases = []
    for key, default, bounds in key_bounds():
        bad: list[tuple[str, str]] = []
        num = isinstance(default, (int, float)) and not isinstance(default, bool)
        if "choices" in bounds:
            bad.append(("choice", "no-such-choice"))
        if num and "min" in bounds:
            bad.append(("below-min", str(type(default)(bounds["min"] - 1))))
        if num and "max" in bounds:
            bad.append(("over-max", str(type(default)(bounds["max"] + 1))))
        if num and "min_exclusive" in bounds:
            bad.append(("at-min-exclusive", str(type(default)(bounds["min_exclusive"]))))
        for what, value in bad:
            cases.append(Case(f"bound:{key}:{what}",
                              lambda tmp, k=key, v=value: (_run(tmp, f"{k}={v}"), f"'{k}'")))
    return cases


# -- photo folders, broken in one way each ----------------------------------------------------------
def _folder(tmp: Path, **kw: object) -> Path:
    return make_face_folder(tmp / "faces", **{"users": 2, "photos": 3, **kw})  # type: ignore[arg-type]


def _corrupt(tmp: Path) -> Path:
    root = _folder(tmp)
    bad = root / "user01" / "01.png"
    bad.write_bytes(b"not a png at all")
    return bad


def _truncated(tmp: Path) -> Path:
    root = _folder(tmp, size=64)
    bad = root / "user00" / "02.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return bad


def _folder_case(spec_kind: str, broken: Callable[[Path], Path], name_of: Callable[[Path, Path], str] = lambda t, p: str(p),
                 extra: tuple[str, ...] = ()) -> Callable[[Path], tuple[list[str], str]]:
    def make(tmp: Path) -> tuple[list[str], str]:
        named = broken(tmp)
        return _run(tmp, *SMALL, f"data.dataset={spec_kind}:{tmp / 'faces'}", *extra), name_of(tmp, named)
    return make


def _empty_dir(tmp: Path) -> Path:
    (tmp / "faces").mkdir()
    return tmp / "faces"


def _empty_user(tmp: Path) -> Path:
    root = _folder(tmp)
    (root / "user02").mkdir()
    return root / "user02"


def _bad_attributes(tmp: Path) -> Path:
    root = _folder(tmp)
    (root / "attributes.csv").write_text("user,gender,age\nuser00,robot,30\n")
    return root / "attributes.csv"


def _too_few(tmp: Path) -> Path:
    _folder(tmp, photos=2)  # SMALL needs 3 per user
    return tmp / "faces"


def _celeba(tmp: Path, corrupt: bool = False, annotations: bool = True) -> Path:
    root = tmp / "faces"
    imgs = root / "img_align_celeba"
    imgs.mkdir(parents=True)
    ident, attrs = [], ["6", "Male Young"]
    for u in range(2):
        for k in range(3):
            name = f"{u}{k:05d}.jpg"
            Image.new("RGB", (20, 24), (40 * u, 80, 20 * k)).save(imgs / name)
            ident.append(f"{name} {u + 1}")
            attrs.append(f"{name} {1 if u else -1} 1")
    if annotations:
        (root / "identity_CelebA.txt").write_text("\n".join(ident) + "\n")
        (root / "list_attr_celeba.txt").write_text("\n".join(attrs) + "\n")
    if corrupt:
        (imgs / "100001.jpg").write_bytes(b"\xff\xd8\xff garbage")
        return imgs / "100001.jpg"
    return root / "identity_CelebA.txt"


def _prior_folder(tmp: Path, config: str | None) -> Path:
    p = tmp / "prior"
    (p / "unet").mkdir(parents=True)
    if config is not None:
        (p / "unet" / "config.json").write_text(config)
    return p


def _missing_run(cmd: list[str]) -> Callable[[Path], tuple[list[str], str]]:
    return lambda tmp: ([*cmd, "--runs-dir", str(tmp / "runs")], "no-such-run")


CASES: list[Case] = [
    *_bound_cases(),
    # attack.prior: a missing path, a folder without a UNet config, an unreadable config, a file, an unknown name
    Case("prior:missing-path", lambda tmp: (_run(tmp, "attack.prior=/nonexistent/prior-xyz"), "/nonexistent/prior-xyz")),
    Case("prior:relative-missing", lambda tmp: (_run(tmp, "attack.prior=./no/such/prior"), "./no/such/prior")),
    Case("prior:no-unet-config", lambda tmp: (_run(tmp, f"attack.prior={_prior_folder(tmp, None)}"), str(tmp / "prior"))),
    Case("prior:corrupt-config", lambda tmp: (_run(tmp, f"attack.prior={_prior_folder(tmp, '{not json')}"),
                                              str(tmp / "prior" / "unet" / "config.json"))),
    Case("prior:unknown-name", lambda tmp: (_run(tmp, "attack.prior=faces99"), "faces99")),
    # other cross-key checks
    Case("attack.methods:unknown", lambda tmp: (_run(tmp, "attack.methods=ig,nope"), "attack.methods")),
    Case("attack.rounds:after-last", lambda tmp: (_run(tmp, "rounds=2", "attack.rounds=3"), "attack.rounds")),
    Case("attack.methods:empty", lambda tmp: (_run(tmp, "attack.enabled=true", "attack.methods="), "attack.methods")),
    Case("attack.users:sample-0", lambda tmp: (_run(tmp, "attack.enabled=true", "attack.users=sample:0"), "attack.users")),
    Case("attack.users:malformed-sample", lambda tmp: (_run(tmp, "attack.users=sample:x"), "attack.users")),
    Case("attack.users:not-a-run-user", _folder_case("folder", _folder, lambda t, p: "attack.users",
                                                     extra=("attack.users=user00,nobody",))),
    Case("clients_per_round:more-than-users", lambda tmp: (_run(tmp, "users=2", "clients_per_round=3"), "clients_per_round")),
    Case("model.width:not-buildable", lambda tmp: (_run(tmp, "model.width=3"), "model.width")),
    Case("simulation.client_cpus:more-than-ray-has", lambda tmp: (_run(tmp, "simulation.ray_num_cpus=2",
                                                                       "simulation.client_cpus=4"), "simulation.client_cpus")),
    Case("attack.worker_cpus:leaves-clients-none", lambda tmp: (_run(tmp, "simulation.ray_num_cpus=2",
                                                                     "attack.worker_cpus=2"), "attack.worker_cpus")),
    Case("simulation.client_gpus:more-than-exist", lambda tmp: (_run(tmp, "simulation.client_gpus=1000"),
                                                                "simulation.client_gpus")),
    Case("model.name:unknown", lambda tmp: (_run(tmp, "model.name=transformer9"), "model.name")),
    Case("key:unknown", lambda tmp: (_run(tmp, "data.no_such_key=1"), "data.no_such_key")),
    Case("key:unknown-section", lambda tmp: (_run(tmp, "no_such.key=1"), "no_such")),
    Case("key:not-a-number", lambda tmp: (_run(tmp, "lr=fast"), "'lr'")),
    Case("config-file:missing", lambda tmp: (["run", "--runs-dir", str(tmp / "runs"), "--config", str(tmp / "nope.toml")],
                                             str(tmp / "nope.toml"))),
    # a task with nothing to learn
    Case("task:identity-one-user", _folder_case("folder", lambda t: _folder(t, attributes=False),
                                                lambda t, p: "'users'", extra=("users=1",))),
    Case("task:attributes-without-labels", _folder_case("folder", lambda t: _folder(t, attributes=False),
                                                        lambda t, p: "'task'", extra=("task=attributes",))),
    # every dataset kind: missing, empty or corrupt source
    Case("dataset:unknown-kind", lambda tmp: (_run(tmp, "data.dataset=nope:x"), "nope:x")),
    Case("dataset:folder-no-path", lambda tmp: (_run(tmp, "data.dataset=folder:"), "folder:")),
    Case("dataset:folder-missing", lambda tmp: (_run(tmp, f"data.dataset=folder:{tmp / 'gone'}"), str(tmp / "gone"))),
    Case("dataset:folder-empty", _folder_case("folder", _empty_dir)),
    Case("dataset:folder-empty-user", _folder_case("folder", _empty_user)),
    Case("dataset:folder-corrupt-image", _folder_case("folder", _corrupt)),
    Case("dataset:folder-truncated-image", _folder_case("folder", _truncated)),
    Case("dataset:folder-bad-attributes", _folder_case("folder", _bad_attributes)),
    Case("dataset:folder-too-few-photos", _folder_case("folder", _too_few, lambda t, p: "'users'")),
    Case("dataset:lfw-missing", lambda tmp: (_run(tmp, f"data.dataset=lfw:{tmp / 'gone'}"), str(tmp / "gone"))),
    Case("dataset:lfw-empty", _folder_case("lfw", _empty_dir)),
    Case("dataset:lfw-corrupt-image", _folder_case("lfw", _corrupt)),
    Case("dataset:celeba-missing", lambda tmp: (_run(tmp, f"data.dataset=celeba:{tmp / 'gone'}"), str(tmp / "gone"))),
    Case("dataset:celeba-no-annotations", _folder_case("celeba", lambda t: _celeba(t, annotations=False))),
    Case("dataset:celeba-corrupt-image", _folder_case("celeba", lambda t: _celeba(t, corrupt=True))),
    Case("dataset:synthfaces-bad-split", lambda tmp: (_run(tmp, "data.dataset=synthfaces:nosplit"), "nosplit")),
    Case("dataset:synthshift-split", lambda tmp: (_run(tmp, "data.dataset=synthshift:x"), "synthshift:x")),
    Case("dataset:hf-no-name", lambda tmp: (_run(tmp, "data.dataset=hf:"), "hf:")),
    Case("dataset:mnist-bad-split", lambda tmp: (_run(tmp, "data.dataset=mnist:nosplit"), "nosplit")),
    Case("dataset:mnist-missing-csv", lambda tmp: (_run(tmp, f"data.dataset=mnist:train:{tmp / 'gone.csv'}"),
                                                   str(tmp / "gone.csv"))),
    Case("dataset:fashion-mnist-missing", lambda tmp: (_run(tmp, f"data.dataset=fashion-mnist:test:{tmp / 'gone'}"),
                                                       str(tmp / "gone"))),
    # sweeps: every grid point is validated before the first federation
    Case("sweep:bad-grid-value", lambda tmp: (["sweep", "--runs-dir", str(tmp / "runs"), "--grid", "lr=0.1,-1"], "'lr'")),
    Case("sweep:bad-grid-key", lambda tmp: (["sweep", "--runs-dir", str(tmp / "runs"), "--grid", "data.nope=1,2"],
                                            "data.nope")),
    # the other commands that open a prior or a dataset
    Case("prior-sample:missing-path", lambda tmp: (["prior", "sample", "--prior", "/nonexistent/p", "--n", "1"],
                                                   "/nonexistent/p")),
    Case("prior-eval:missing-path", lambda tmp: (["prior", "eval", "--prior", "/nonexistent/p", "--images", "1"],
                                                 "/nonexistent/p")),
    Case("audit:missing-prior", lambda tmp: (["audit", "--prior", "/nonexistent/p", "--images", "1", "--mu", "1"],
                                             "/nonexistent/p")),
    Case("data-info:missing-folder", lambda tmp: (["data", "info", f"folder:{tmp / 'gone'}"], str(tmp / "gone"))),
    # every command that takes a run id, given a missing run
    Case("run-id:export", _missing_run(["export", "no-such-run"])),
    Case("run-id:inspect", _missing_run(["inspect", "no-such-run"])),
    Case("run-id:audit", _missing_run(["audit", "--run", "no-such-run"])),
]


@pytest.fixture(scope="module", autouse=True)
def _warm_imports() -> None:
    """Import what the cases touch once, outside any capture: first-import warnings are not the case's output."""
    import fl_sim.cli  # noqa: F401
    import fl_sim.core.priors  # noqa: F401
    import fl_sim.experiments.runner  # noqa: F401
    from fl_sim.core.data import open_dataset

    open_dataset("synthfaces")


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_refused(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    import fl_sim.experiments.runner as runner
    from fl_sim.cli import main

    def tripwire(*a: object, **k: object) -> None:
        raise AssertionError(f"{case.id}: validation let it through; the federation would start")

    import fl_sim.federation

    monkeypatch.setattr(runner, "run_federation", tripwire)
    monkeypatch.setattr(fl_sim.federation, "run_federation", tripwire)  # sweep imports it when called
    argv, named = case.make(tmp_path)
    capsys.readouterr()  # what setting up the case printed
    monkeypatch.setattr(sys, "argv", ["fl-sim", *argv])
    with pytest.raises(SystemExit) as ex:
        main()
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert ex.value.code == 2, (ex.value.code, err)
    assert len(lines) == 1, err
    assert named in lines[0], (named, err)
    assert "Traceback" not in err and "\x1b[" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_bad_prior_path_end_to_end(tmp_path: Path) -> None:
    """The console entry point, as a user runs it: rc 2 in seconds, the path named, no run folder."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "fl_sim.cli", "run", "--runs-dir", str(tmp_path / "runs"),
                           "--set", "users=4", "--set", "rounds=1", "--set", "attack.prior=/nonexistent/prior-xyz"],
                          capture_output=True, text=True, env=env, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "/nonexistent/prior-xyz" in lines[0] and "attack.prior" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
    assert time.time() - t0 < 20


# -- errors from workers reach the store and the terminal as the original exception's one line ------
def test_ray_wrapped_error_is_unwrapped_to_the_original_line() -> None:
    from ray.exceptions import RayTaskError

    from attacks.priors import PriorError
    from fl_sim.core.errors import error_line

    try:
        raise PriorError("cannot load diffusion prior from folder '/p': \x1b[31mno weights\x1b[0m\nsecond line")
    except PriorError as exc:
        wrapped = RayTaskError("warm_up", "Traceback (most recent call last):\n\x1b[36mray::AttackWorker\x1b[39m", exc)
        for e in (wrapped, wrapped.as_instanceof_cause()):
            assert error_line(e) == "PriorError: cannot load diffusion prior from folder '/p': no weights"


def test_a_failing_attack_job_records_the_original_error(tmp_path: Path) -> None:
    import torch

    from server.worker import AttackJob, AttackWorker

    threads = torch.get_num_threads()
    try:
        _failing_job(tmp_path, AttackWorker(low_priority=False))  # in-process: no Ray; pytest's threads keep their priority
    finally:
        torch.set_num_threads(threads)  # the worker pins one thread; later tests in this process keep theirs


def _failing_job(tmp_path: Path, worker: Any) -> None:
    from server.worker import AttackJob

    prior = _prior_folder(tmp_path, '{"_class_name": "UNet2DModel"}')  # a readable config, no weights
    job = AttackJob(job_id=1, round=1, observations=[], targets=["u0"], methods=["diffusion"], attack_configs={},
                    prior=str(prior), dataset="synthfaces", image_size=16, photos_per_user=2, run_users=["u0"],
                    run_dir=str(tmp_path))
    out = worker.run_job(job)
    assert out.error is not None and out.error.startswith("PriorError: ") and str(prior) in out.error
    assert "\n" not in out.error and "\x1b[" not in out.error and "RayTaskError" not in out.error
    assert [r.error for r in out.results] == [out.error]


def test_runs_dir_under_a_file_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Found when the run folder is made, so after the banner (the runner prints it first): rc 2, no traceback."""
    import flwr.simulation

    from fl_sim.cli import main

    def tripwire(*a: object, **k: object) -> None:
        raise AssertionError("the federation would start")

    monkeypatch.setattr(flwr.simulation, "run_simulation", tripwire)
    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(sys, "argv", ["fl-sim", *_run(tmp_path / "afile", "users=2", "attack.enabled=false")])
    with pytest.raises(SystemExit) as ex:
        main()
    err = capsys.readouterr().err
    assert ex.value.code == 2 and "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if "error" in ln]
    assert len(errors) == 1 and str(tmp_path / "afile") in errors[0] and errors[0] == err.strip().splitlines()[-1]


def test_a_client_app_error_reason_becomes_the_original_line() -> None:
    """Flower reports a raising ClientApp as ``<class ...>:<'...Ray traceback...'>``: the original line is kept."""
    import traceback

    from flwr.clientapp.client_app import ClientAppException
    from ray.exceptions import RayTaskError

    from fl_sim.core.errors import reason_line

    try:
        try:
            raise ValueError("boom: bad \x1b[31mpixel\x1b[0m")
        except ValueError as ex:
            raise ClientAppException(str(ex)) from ex
    except ClientAppException as ce:
        wrapped = RayTaskError("ClientAppActor.run", traceback.format_exc(), ce).as_instanceof_cause()
        assert reason_line(str(type(wrapped)) + ":<'" + str(wrapped) + "'>") == "ValueError: boom: bad pixel"
        assert reason_line(str(type(ce)) + ":<'" + str(ce) + "'>") == "boom: bad pixel"
    assert reason_line("") == "no reason given"
