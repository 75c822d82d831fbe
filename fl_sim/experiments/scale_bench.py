"""`fl-sim bench scale`: what a federation costs as its users grow — round time, memory of the whole process tree,
store size, the time of the read commands on its store, and the attack worker's throughput."""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fl_sim.core.store import RunStore

# Cost only: 100 embedded identities split 10 ways give 1,000 users of disjoint photos, but users cut from one
# identity look alike, so no leakage figure is taken from these runs (see fl_sim/core/data/split.py).
DATASET = "synthfaces-split:10"
# The held-out utility on a fixed sample of 100 users each round: evaluating all 1,000 costs ~11 s a round, a cost of
# the experimenter's harness, not of the federation (utility_users=0 is every user; measured in docs/BENCHMARKS.md).
BASE = ["data.photos_per_user=6", "data.holdout_per_user=2", "protocol=fedavg", "utility_users=100"]
# The curious server on a sample of users. Its scorer embeds every run user's photos once (re-identification
# ranks a reconstruction among all of them): with dlib ~0.5 s a user the first time, read back from the on-disk
# embedding cache after that (fl_sim.core.evaluators.cache).
ATTACKS = ["attack.enabled=true", "attack.methods=ig", "attack.iterations=50", "attack.every=1",
           "attack.users=sample:10"]


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of process ``pid`` and all its descendants (Ray's raylet, GCS and workers), from /proc.
    RSS counts the pages processes share (torch's libraries in every Ray worker) once per process; PSS splits
    each shared page among its users, so it sums to what the tree really holds. A process gone meanwhile: 0."""
    import os

    from fl_sim.core.processes import descendants

    page = os.sysconf("SC_PAGE_SIZE")
    rss = pss = 0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/statm") as f:
                rss += int(f.read().split()[1]) * page
            with open(f"/proc/{p}/smaps_rollup") as f:
                pss += next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("Pss:"))
        except (OSError, ValueError, IndexError, StopIteration):
            pass
    return rss, pss


def _cached_embeddings() -> int:
    """Entries in the on-disk embedding cache (one per user's photos, or per run's others' averages, per evaluator)."""
    from fl_sim.core.evaluators.cache import cache_root

    return sum(1 for _ in cache_root().rglob("*.npy")) if cache_root().exists() else 0


def _timed(args: list[str]) -> float:
    """Wall seconds of one fl-sim command (a whole process, as a user runs it); a failure raises."""
    t = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    return time.perf_counter() - t


def run_cell(users: int, sampled: int, rounds: int, runs_dir: Path, attacks: bool = True) -> dict[str, Any]:
    """One federation (`fl-sim run` in its own process), its memory sampled every 0.3 s; then the read commands."""
    exe = str(Path(sys.executable).with_name("fl-sim"))
    sets = [f"data.dataset={DATASET}", f"users={users}", f"clients_per_round={sampled}", f"rounds={rounds}", *BASE,
            *(ATTACKS if attacks else ["attack.enabled=false"])]
    before = {p.name for p in runs_dir.iterdir()} if runs_dir.exists() else set()
    cached = _cached_embeddings()
    t0 = time.perf_counter()
    proc = subprocess.Popen([exe, "run", "--runs-dir", str(runs_dir), *[a for s in sets for a in ("--set", s)]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    peak = [0, 0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss, pss = tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            stop.wait(0.3)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    _, stderr = proc.communicate()
    stop.set()
    watcher.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{users} users / {sampled} sampled: fl-sim run failed: "
                           f"{stderr.decode(errors='replace').strip().splitlines()[-1:]}")
    run_dir = next(runs_dir / n for n in sorted({p.name for p in runs_dir.iterdir()} - before))
    st = RunStore(run_dir / "store.sqlite", readonly=True)
    try:
        rounds_rows, attacks = st.rounds(), st.attacks()
        counts = st.counts()
    finally:
        st.close()
    secs = [float(r["seconds"]) for r in rounds_rows]
    done = [a for a in attacks if a["status"] == "finished" and a["seconds"]]
    user = next((a["user"] for a in done if a["user"]), None)
    store_mb = sum(p.stat().st_size for p in run_dir.glob("store.sqlite*")) / 2**20
    row: dict[str, Any] = {
        "users": users, "sampled": sampled, "attacks": attacks, "rounds": len(rounds_rows), "run_wall_s": wall,
        # Round 1 carries the actors' start; the later rounds are the steady cost.
        "round_s": statistics.median(secs[1:]) if len(secs) > 1 else secs[0], "first_round_s": secs[0],
        "peak_rss_gb": peak[0] / 2**30, "peak_pss_gb": peak[1] / 2**30, "store_mb": store_mb,
        "rounds_recorded": counts["rounds"],
        # Embeddings the scorer computed (not read from the on-disk cache): a cold cell pays dlib for every user.
        "embeddings_computed": _cached_embeddings() - cached,
        "attacks_finished": len(done),
        # The worker's pace: attacks per minute of its own time (a job's seconds, from the store).
        "attacks_per_min": 60.0 * len(done) / sum(float(a["seconds"]) for a in done) if done else None,
        "runs_s": _timed([exe, "runs", "--runs-dir", str(runs_dir)]),
        "inspect_s": _timed([exe, "inspect", run_dir.name, "--runs-dir", str(runs_dir)]),
        "export_s": _timed([exe, "export", run_dir.name, "--runs-dir", str(runs_dir)]),
        "inspect_user_s": (_timed([exe, "inspect", run_dir.name, "--runs-dir", str(runs_dir), "--user", user])
                           if user else None),
        "run_id": run_dir.name,
    }
    return row


def bench_scale(users: list[int], sampled: list[int], rounds: int, runs_dir: Path,
                say: Any = None, attacks: bool = True) -> dict[str, Any]:
    """Every (users, sampled ≤ users) cell, one federation each, in order."""
    rows = []
    for n in users:
        for k in sampled:
            if k > n:
                continue
            if say:
                say(f"[scale] {n} users, {k} sampled per round, {rounds} rounds")
            rows.append(run_cell(n, k, rounds, runs_dir, attacks))
            if say:
                r = rows[-1]
                say(f"    round {r['round_s']:.2f} s, peak RSS {r['peak_rss_gb']:.2f} GB (PSS {r['peak_pss_gb']:.2f}), store {r['store_mb']:.1f} MB, "
                    f"inspect {r['inspect_s']:.2f} s, run {r['run_wall_s']:.0f} s, "
                    f"{r['embeddings_computed']} embeddings computed")
    return {"dataset": DATASET, "settings": BASE + (ATTACKS if attacks else []), "rounds": rounds, "rows": rows,
            "note": "cost only: users of one identity look alike, no leakage is read from these runs"}


def write_big_store(run_dir: Path, users: int, rounds: int, attacked: int = 10) -> int:
    """A finished run's store with ``users`` × ``rounds`` update rows (every user in every round) and ``attacked``
    users attacked in every round, in the store's own schema. Written in bulk (one transaction per round: a real
    run's commit per row would take longer than the reads it is for); returns the update rows."""
    import json

    from fl_sim.core.config import load_config, to_dict

    run_dir.mkdir(parents=True)
    cfg = load_config(None, [f"data.dataset={DATASET}", f"users={users}", f"rounds={rounds}", *BASE, *ATTACKS])
    st = RunStore(run_dir / "store.sqlite")
    st.create_run(run_dir.name, to_dict(cfg))
    names = [f"u{i // 10:04d}-{i % 10}" for i in range(users)]
    for i, u in enumerate(names):
        st.add_user(u, i, DATASET, {"gender": "female", "age_band": "<30"}, 6, 2)
    norms = json.dumps({f"layer{k}.weight": 0.1 for k in range(8)})
    db = st._db  # noqa: SLF001 - bulk rows for a bench; the columns are the writer's own
    for r in range(1, rounds + 1):
        with db:
            db.execute("INSERT INTO rounds VALUES (?,?,?,?,?,?,?)", (r, time.time(), 1.0, users, 0.5, 0.6, "{}"))
            db.executemany("INSERT INTO updates (round, user, node_id, num_examples, local_steps, lr, loss, protocol, "
                           "update_norm, layer_norms, defenses, metrics, epsilon) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                           [(r, u, str(i), 6, 4, 0.01, 0.5, "fedavg", 1.0, norms, "{}", '{"loss": 0.5}', None)
                            for i, u in enumerate(names)])
            metrics = json.dumps({"sface_face_similarity": 0.3, "dlib_face_similarity": 0.4, "sface_reid_rank": 1,
                                  "dlib_reid_rank": 2, "reid_top1": 1, "identity_gain": 0.1, "sface_reid_top1": 1,
                                  "dlib_reid_top1": 0, "sface_identity_gain": 0.1, "dlib_identity_gain": 0.2})
            db.executemany("INSERT INTO attacks (round, user, aggregate_size, method, status, created, finished, "
                           "seconds, metrics, defenses) VALUES (?,?,1,'ig','finished',?,?,1.0,?,'{}')",
                           [(r, u, time.time(), time.time(), metrics) for u in names[:attacked]])
    st.finish_run("finished")
    st.close()
    return users * rounds


def big_store_reads(tmp: Path, users: int = 1000, rounds: int = 100) -> dict[str, Any]:
    """`fl-sim runs`, `inspect` and `export` on a store of ``users`` × ``rounds`` update rows: each a whole process,
    and the same reads in this process (the store's own cost, without Python's start and imports)."""
    from fl_sim.experiments.reports import inspect_report

    exe = str(Path(sys.executable).with_name("fl-sim"))
    runs = tmp / "runs"
    t = time.perf_counter()
    n = write_big_store(runs / "big-run", users, rounds)
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    inspect_report(runs / "big-run")
    in_process = time.perf_counter() - t
    return {"update_rows": n, "attack_rows": 10 * rounds, "write_s": write_s,
            "store_mb": sum(p.stat().st_size for p in (runs / "big-run").glob("store.sqlite*")) / 2**20,
            "runs_s": _timed([exe, "runs", "--runs-dir", str(runs)]),
            "inspect_s": _timed([exe, "inspect", "big-run", "--runs-dir", str(runs)]),
            "inspect_json_s": _timed([exe, "inspect", "big-run", "--runs-dir", str(runs), "--json"]),
            "inspect_in_process_s": in_process,
            "python_start_s": _timed([sys.executable, "-c", "import torch"]),
            "export_s": _timed([exe, "export", "big-run", "--runs-dir", str(runs)])}
