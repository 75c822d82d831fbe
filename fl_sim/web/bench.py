"""`fl-sim bench web`: how fast the web view answers on a large run store (time per page over real HTTP)."""

from __future__ import annotations

import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from fl_sim.core.store import FINISHED, RunStore

PAGES = {"run page": "/runs/{run}", "run JSON": "/api/runs/{run}", "run live part": "/runs/{run}/live",
         "progress JSON": "/api/runs/{run}/progress", "runs page": "/", "user page": "/runs/{run}/users/{user}",
         "compare (this run)": "/compare?run={run}"}


def write_store(run_dir: Path, users: int, rounds: int, methods: list[str], seed: int = 0) -> str:
    """A finished run's store as the federation writes it (through ``RunStore``), of ``users`` users each attacked by
    every method in every one of ``rounds`` rounds, DP-SGD for half of them; metrics are random draws shaped like the
    worker's, images a 32 px PNG each. What the view costs depends on these rows, not on their values."""
    from PIL import Image

    from fl_sim.core.config import load_config, to_dict

    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    (run_dir / "attacks").mkdir()
    cfg = load_config(None, [f"users={users}", f"rounds={rounds}", "attack.enabled=true", "attack.every=1",
                             f"attack.methods={','.join(methods)}"])
    st = RunStore(run_dir / "store.sqlite")
    st.create_run(run_dir.name, to_dict(cfg))
    names = [f"u{i:04d}" for i in range(users)]
    dp = {"dp_sgd": {"noise_multiplier": 1.0, "max_grad_norm": 20.0}}
    for i, u in enumerate(names):
        st.add_user(u, i, "synthfaces", {"gender": ["female", "male"][i % 2], "age_band": "<30"}, 32, 8,
                    dp if i % 2 else None)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    for r in range(1, rounds + 1):
        st.add_round(r, time.time(), 1.0, users, 0.5 / r, 0.5 + 0.3 * r / rounds, {})
        for i, u in enumerate(names):
            st.add_update(rnd=r, user=u, node_id=i, num_examples=32, local_steps=4, lr=0.01, loss=0.5, protocol="fedavg",
                          update_norm=1.0, layer_norms={"fc.weight": 1.0}, defenses=dp if i % 2 else None,
                          metrics={"dp-epsilon": 0.5 * r} if i % 2 else {})
        ids = st.add_attacks([{"rnd": r, "user": u, "method": m, "status": "queued"} for u in names for m in methods])
        for (u, m), aid in zip(((u, m) for u in names for m in methods), ids):
            name = f"r{r:03d}_{u}_{m}.png"
            (run_dir / "attacks" / name).write_bytes(png)
            sims = rng.uniform(-0.1, 0.8, 2)
            metrics = {**{f"{ev}_{k}": v for ev, s in zip(("sface", "dlib"), sims)
                          for k, v in (("face_similarity", float(s)), ("reid_rank", int(rng.integers(1, users + 1))),
                                       ("identity_gain", float(s) - 0.2), ("reid_top1", int(rng.random() < 0.5)))},
                       "identity_gain": float(min(sims)) - 0.2, "reid_top1": int(rng.random() < 0.5),
                       "reid_rank": 1, "inferred_gender": "female", "inferred_age_band": "<30", "gender_correct": 1,
                       "age_band_correct": 1, "seconds": 1.0}
            st.update_attack(aid, status="finished", metrics=metrics, image=f"attacks/{name}", commit=False)
        st.commit()
    st.finish_run(FINISHED)
    st.close()
    return names[0]


def _get(url: str) -> tuple[float, int]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        n = len(r.read())
    return time.perf_counter() - t, n


def bench_web(users: int = 100, rounds: int = 10, methods: tuple[str, ...] = ("ig", "diffusion"),
              repeats: int = 5, port: int = 0) -> dict[str, Any]:
    """Write a ``users`` × ``rounds`` attacked store, serve it with `fl-sim serve` on the loopback, and time each
    page: the first (cold) request and the median of ``repeats`` more. Rows: page, cold_s, median_s, bytes."""
    import socket

    with tempfile.TemporaryDirectory(prefix="fl-sim-bench-web-") as tmp:
        runs = Path(tmp) / "runs"
        t0 = time.perf_counter()
        user = write_store(runs / "bench-run", users, rounds, list(methods))
        write_s = time.perf_counter() - t0
        store_mb = sum(p.stat().st_size for p in (runs / "bench-run").glob("store.sqlite*")) / 2**20
        if not port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
        exe = Path(sys.executable).with_name("fl-sim")
        proc = subprocess.Popen([str(exe), "serve", "--runs-dir", str(runs), "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        rows = []
        try:
            deadline = time.time() + 60
            while True:
                try:
                    urllib.request.urlopen(base + "/static/app.css", timeout=2).read()
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError("fl-sim serve did not start") from None
                    time.sleep(0.2)
            for name, path in PAGES.items():
                url = base + path.format(run="bench-run", user=user)
                cold, size = _get(url)
                warm = [_get(url)[0] for _ in range(repeats)]
                rows.append({"page": name, "path": path, "cold_s": cold, "median_s": statistics.median(warm),
                             "max_s": max(warm), "bytes": size})
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
    return {"users": users, "attacked_rounds": rounds, "methods": list(methods), "attacks": users * rounds * len(methods),
            "store_mb": store_mb, "write_store_s": write_s, "repeats": repeats, "rows": rows,
            "note": "synthetic store written through RunStore (random metrics); fl-sim serve over real HTTP on 127.0.0.1"}
