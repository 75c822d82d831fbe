"""`run_federation`: config -> run folder -> Flower Simulation Engine (Ray) -> run store."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_sim.core.loopback import ray_on_loopback
from fl_sim.core.config import RunConfig, load_config, to_dict, to_toml
from fl_sim.core.preflight import check_ray_address, check_resources
from fl_sim.core.data import UserRecord, choose_users, open_dataset
from fl_sim.core.errors import ConfigError, FlSimError, error_line
from fl_sim.core.store import FAILED, FINISHED, RUNNING, RunStore
from fl_sim.core.processes import ProcessGuard, reap_orphans


@dataclass(frozen=True)
class RunResult:
    """Where a finished (or failed) run lives."""

    run_id: str
    run_dir: Path
    status: str
    seconds: float
    error: str | None = None


def prepare_users(cfg: RunConfig) -> list[UserRecord]:
    """Open the dataset and pick the users; every data error surfaces here, before any folder exists.

    Also settles ``task=auto`` on ``cfg`` (see ``resolve_task``), so every later reader of
    ``cfg.task`` — the heads, the clients, the config snapshot — sees the task that runs.
    """
    check_resources(cfg.simulation, cfg.attack)  # this machine can place the actors asked for
    d = cfg.data
    dataset = open_dataset(d.dataset)
    users = choose_users(dataset, n_users=cfg.users,
                         need=max(d.min_photos_per_user, d.photos_per_user + d.holdout_per_user))
    dataset.check([u.user for u in users])  # every photo the run will read decodes: a bad file named now, not in Ray
    cfg.task = resolve_task(cfg, users)
    from fl_sim.core.adversary import adversary_targets
    from fl_sim.core.defenses import user_defenses

    names = [u.user for u in users]
    cfg.attacked_users(names)  # named attack targets must be run users (init_run checks again: API callers)
    user_defenses(cfg, names)  # likewise users named by a defense
    adversary_targets(cfg, names)  # and the malicious server's targets
    return users


def resolve_task(cfg: RunConfig, users: list[UserRecord]) -> str:
    """The task the data supports: a task with nothing to learn from is refused, never run silently.

    ``auto`` is ``attributes`` when every chosen user has a gender or an age band, else
    ``identity`` (one class per user: always labelled). ``attributes`` on data where no user has
    either is a config error: every label would be unknown, every loss 0 and every update empty.
    """
    labelled = [u.user for u in users if any(u.attributes.get(k) for k in ("gender", "age_band"))]
    task = cfg.task
    if task == "auto":
        task = "attributes" if len(labelled) == len(users) else "identity"
    elif task == "attributes" and not labelled:
        raise ConfigError(f"config key 'task': attributes needs gender/age labels, but none of the {len(users)} users "
                          f"of dataset {cfg.data.dataset!r} has any (add an attributes.csv with user,gender,age, "
                          "or use task=identity)")
    if task == "identity" and len(users) < 2:
        # One user is one class: the loss is 0 and every update empty, so there is nothing to train or attack.
        raise ConfigError(f"config key 'users': task identity with {len(users)} user has one class, nothing to learn "
                          f"(dataset {cfg.data.dataset!r}{'' if labelled else ' has no gender/age labels'}; "
                          "set users >= 2, or task=attributes with an attributes.csv)")
    return task


class _ServerFailed(RuntimeError):
    """The server app stopped without a final model; its message is already the cause's one line."""


def check_runs_dir(runs_dir: Path) -> None:
    """``runs_dir`` is a folder that can be written, or can be made: a one-line error naming it otherwise."""
    existing = next((p for p in (runs_dir, *runs_dir.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise FlSimError(f"--runs-dir {runs_dir}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FlSimError(f"--runs-dir {runs_dir}: {existing} is not writable")


def new_run_dir(runs_dir: Path) -> tuple[str, Path]:
    check_runs_dir(runs_dir)
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    run_dir = runs_dir / run_id
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        raise FlSimError(f"--runs-dir {runs_dir}: cannot create a run folder there ({exc.strerror or exc})") from None
    return run_id, run_dir


def quiet_flower() -> None:
    """Flower's INFO log repeats per message; fl-sim prints its own per-round progress."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    logging.getLogger("flwr").setLevel(logging.ERROR)


def backend_config(cfg: RunConfig) -> dict[str, Any]:
    """Flower's Ray backend settings; its ``init_args`` go to ``ray.init``. Attached to a cluster
    (``simulation.ray_address``), only the address and the log settings: Ray refuses node settings
    (CPUs, node address, dashboard) when it connects to a cluster it did not start."""
    init: dict[str, Any] = {"logging_level": "error", "log_to_driver": False}
    if cfg.simulation.ray_address:
        init["address"] = cfg.simulation.ray_address
    else:
        init["include_dashboard"] = False
        if ray_on_loopback():
            init["_node_ip_address"] = "127.0.0.1"
        if cfg.simulation.ray_num_cpus:
            init["num_cpus"] = cfg.simulation.ray_num_cpus
    return {"client_resources": {"num_cpus": cfg.simulation.client_cpus, "num_gpus": cfg.simulation.client_gpus},
            "init_args": init}


def check_simulation_ray(cfg: RunConfig) -> None:
    """In a simulation the attack worker lives in the simulation's Ray: ``attack.ray_address`` (meant for the
    Deployment Engine's ServerApp process) may only repeat ``simulation.ray_address``."""
    a, sim = cfg.attack, cfg.simulation
    if a.enabled and a.ray_address and a.ray_address != sim.ray_address:
        raise ConfigError(f"config key 'attack.ray_address': {a.ray_address!r} in a simulation, whose worker runs in "
                          f"the simulation's Ray ({sim.ray_address or 'a private one'}); set simulation.ray_address "
                          "to run the whole simulation on that cluster, or leave attack.ray_address empty")


def attach_ray(cfg: RunConfig) -> None:
    """Connect this driver to the cluster ``simulation.ray_address`` names (Flower's backend then uses this
    connection); an unreachable address is a one-line error naming the key, at once."""
    import ray

    from server.worker import ray_env

    address = cfg.simulation.ray_address
    if ray.is_initialized():
        return
    check_ray_address(address, "simulation.ray_address")
    ray_on_loopback(address)  # a cluster on 127.0.0.1: this driver is at 127.0.0.1 too
    init = backend_config(cfg)["init_args"]
    try:
        ray.init(runtime_env=ray_env(), **init)
    except Exception as exc:  # noqa: BLE001 - Ray's refusals (no cluster for auto, a version mismatch): one line
        raise ConfigError(f"config key 'simulation.ray_address': cannot connect to Ray at {address}: "
                          f"{error_line(exc)}") from None


def stored_run(run_dir: Path) -> tuple[RunConfig, list[str]]:
    """A run folder ``init_run`` made: its config snapshot (task settled) and its users in partition order, read
    back as they are. The apps of a deployment use this instead of checking the users' photos again: every
    ClientApp process (one per message) would otherwise decode the whole dataset anew."""
    cfg = load_config(run_dir / "config.toml", [])
    store = RunStore(run_dir / "store.sqlite", readonly=True)
    try:
        users = [u["user"] for u in sorted(store.users(), key=lambda u: int(u["partition_id"]))]
    finally:
        store.close()
    return cfg, users


def init_run(cfg: RunConfig, runs_dir: Path) -> tuple[list[str], str, Path]:
    """Validate the users, then create the run folder, its store and config snapshot."""
    from fl_sim.core.adversary import adversary_targets
    from fl_sim.core.defenses import user_defenses

    users = prepare_users(cfg)
    cfg.attacked_users([u.user for u in users])  # named attack targets must exist: fail before the folder
    defenses = user_defenses(cfg, [u.user for u in users])  # likewise users named by a defense
    adversary_targets(cfg, [u.user for u in users])
    run_id, run_dir = new_run_dir(runs_dir)
    store = RunStore(run_dir / "store.sqlite")
    try:
        store.create_run(run_id, to_dict(cfg))
        (run_dir / "config.toml").write_text(to_toml(cfg) + "\n")
        for pid, u in enumerate(users):
            store.add_user(u.user, pid, cfg.data.dataset, u.attributes, cfg.data.photos_per_user,
                           cfg.data.holdout_per_user, defenses[u.user])
    finally:
        store.close()
    return [u.user for u in users], run_id, run_dir


def run_federation(cfg: RunConfig, runs_dir: Path,
                   progress: Callable[[int, dict[str, Any]], None] | None = None,
                   wrap: Callable[[Any], Any] | None = None) -> RunResult:
    """Run one federation to the end; the run folder is either completed or marked failed.

    ``wrap(strategy) -> strategy``: an outer Flower strategy around fl-sim's (e.g. a DP wrapper).
    """
    check_simulation_ray(cfg)
    ids, run_id, run_dir = init_run(cfg, runs_dir)
    return _simulate(cfg, ids, run_dir, runs_dir, progress, wrap)


# What a resumed run cannot restore: state kept outside the store (the malicious server's memory of what it sent,
# SecAgg+'s and Flower's user-level DP wrappers' server state, model_check's append-only log of every round).
RESUME_REFUSED = {"secagg": "SecAgg+", "user_dp": "user-level DP", "model_check": "model_check"}


def resume_federation(runs_dir: Path, run_id: str,
                      progress: Callable[[int, dict[str, Any]], None] | None = None,
                      announce: Callable[[RunConfig, int], None] | None = None) -> RunResult:
    """Continue a killed run (``fl-sim run --resume``) after its last finished round, from that round's global model,
    with each user's node state rebuilt from the store (DP-SGD accountants) and the unfinished attacks of the finished
    rounds queued again; with one seed its final model and records are an uninterrupted run's."""
    from fl_sim.core import checkpoints
    from fl_sim.core.adversary import malicious
    from fl_sim.core.defenses import resumed_states
    from server.app import Resume

    run_dir = runs_dir / run_id
    if not run_id or "/" in run_id or run_id.startswith(".") or not (run_dir / "store.sqlite").is_file():
        raise FlSimError(f"--resume {run_id}: no run of that id in {runs_dir}")
    cfg, ids = stored_run(run_dir)
    st = RunStore(run_dir / "store.sqlite")
    try:
        run = st.run()
        if run["status"] == RUNNING:
            raise FlSimError(f"--resume {run_id}: the run is still running (pid {run['pid']})")
        if run["status"] == FINISHED:
            raise FlSimError(f"--resume {run_id}: the run finished; there is nothing to resume")
        if malicious(cfg):
            raise FlSimError(f"--resume {run_id}: a malicious server's run cannot be resumed (what it sent each "
                             "user is not stored)")
        users = st.users()
        used = {name for u in users for name in (u["defenses"] or {})}
        if refused := sorted(RESUME_REFUSED[n] for n in used & set(RESUME_REFUSED)):
            raise FlSimError(f"--resume {run_id}: a run with {', '.join(refused)} cannot be resumed (its state is "
                             "not in the store)")
        done = max((r["round"] for r in st.rounds()), default=0)
        model = checkpoints.load(run_dir, done) if done else None
        if done and model is None:
            raise FlSimError(f"--resume {run_id}: no checkpoint of round {done} in {run_dir / checkpoints.DIR} "
                             "(a run written before fl-sim kept them)")
        last: dict[str, dict[str, Any]] = {}
        for u in st.updates():
            if u["user"] is not None and u["round"] <= done:
                last[str(u["user"])] = u["metrics"]
        resumed = resumed_states({u["user"]: u["defenses"] or {} for u in users}, last)
        check_simulation_ray(cfg)
        st.resume_run(done)
    finally:
        st.close()
    if announce is not None:
        announce(cfg, done)
    return _simulate(cfg, ids, run_dir, runs_dir, progress, None, Resume(done, model), resumed)


def _simulate(cfg: RunConfig, ids: list[str], run_dir: Path, runs_dir: Path,
              progress: Callable[[int, dict[str, Any]], None] | None, wrap: Callable[[Any], Any] | None,
              resume: Any = None, resumed: dict[str, dict[str, str]] | None = None) -> RunResult:
    """The Simulation Engine over the run folder ``run_dir`` (made by ``init_run``, or a resumed run's)."""
    from flwr.simulation import run_simulation

    from clients.app import make_client_app
    from server.app import make_server_app

    run_id = run_dir.name
    reap_orphans(runs_dir)  # Ray processes left by an earlier run whose driver was SIGKILLed
    store = RunStore(run_dir / "store.sqlite")
    t0 = time.time()
    guard = ProcessGuard(run_dir).start()
    old_term = unwind_on_signals(guard, run_dir)
    try:
        quiet_flower()
        os.environ["FLWR_HOME"] = str(run_dir / "flwr_home")
        if cfg.simulation.ray_address:
            attach_ray(cfg)  # before Flower's backend, which would otherwise wait minutes on an unreachable address
        outcome: dict[str, Any] = {}
        run_simulation(server_app=make_server_app(cfg, ids, run_dir, progress, outcome, wrap, resume),
                       client_app=make_client_app(cfg, ids, run_dir, resumed), num_supernodes=len(ids),
                       backend_name="ray", backend_config=backend_config(cfg))
        if "final_arrays" not in outcome:
            raise _ServerFailed(outcome.get("error", "the server app stopped before the last round"))
        summary: dict[str, Any] = {"rounds": cfg.rounds}
        if resume is not None:
            summary["resumed_after_round"] = resume.after_round
        store.finish_run(FINISHED, summary=summary)
        return RunResult(run_id, run_dir, FINISHED, time.time() - t0)
    except BaseException as exc:
        # The original exception's one line: Ray's wrappers unwrapped, escape codes removed.
        msg = str(exc) if isinstance(exc, _ServerFailed) else error_line(exc)
        store.finish_run(FAILED, error=msg)
        if isinstance(exc, (KeyboardInterrupt, FlSimError)):
            raise
        return RunResult(run_id, run_dir, FAILED, time.time() - t0, msg)
    finally:
        store.close()
        _shutdown_ray(guard)
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term[0])
            signal.signal(signal.SIGINT, old_term[1])


class Terminated(KeyboardInterrupt):
    """SIGTERM during a run: unwinds like Ctrl-C, so the store is marked and every process stopped."""


# After a signal, how long the normal unwinding (store marked, Ray shut down, processes stopped) may
# take before the watchdog does it itself and exits: Flower's server thread is not a daemon and can
# wait forever for replies from a stopped runtime, which would hold the interpreter at exit.
UNWIND_GRACE_S = 20.0


def unwind_on_signals(guard: ProcessGuard, run_dir: Path) -> Any:
    """SIGTERM and SIGINT raise ``Terminated`` in the main thread while a run goes, and start a watchdog
    that ends the process (exit 128 + signal) if unwinding has not ended it in ``UNWIND_GRACE_S``.
    Returns the previous handlers (None off the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def watchdog(signum: int) -> None:
        time.sleep(UNWIND_GRACE_S)
        try:  # unwinding is stuck: do its work here, then leave without waiting for Flower's threads
            st = RunStore(run_dir / "store.sqlite")
            if st.run().get("status") == "running":
                st.finish_run(FAILED, error=f"terminated by {signal.Signals(signum).name}")
            st.close()
        except Exception:  # noqa: BLE001 - the processes below matter more than the status line
            pass
        guard.stop()
        os._exit(128 + signum)

    def handler(signum: int, frame: Any) -> None:
        threading.Thread(target=watchdog, args=(signum,), name="fl-sim-unwind-watchdog", daemon=True).start()
        raise Terminated(f"terminated by {signal.Signals(signum).name}")

    # SIGINT too: Python's default handler was not always reached while Flower's loop waited.
    return signal.signal(signal.SIGTERM, handler), signal.signal(signal.SIGINT, handler)


def _shutdown_ray(guard: ProcessGuard) -> None:
    """Ray's own shutdown first (Flower's backend does it on a normal end), then every process the
    run started that is still alive, by its recorded pid; a second Ctrl-C cannot cut this short."""
    old_int = signal.getsignal(signal.SIGINT)
    main = threading.current_thread() is threading.main_thread()
    if main:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            try:
                ray.shutdown()
            except Exception:  # noqa: BLE001 - best effort: the guard below stops what remains
                pass
        guard.stop()
    finally:
        if main:
            signal.signal(signal.SIGINT, old_int)  # SIGTERM's handler is put back by run_federation
