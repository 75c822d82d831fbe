"""What the web view shows, as plain data: each page's JSON twin, read from run stores opened read-only."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fl_sim.core.defenses import describe, hides_user
from fl_sim.core.fmt import json_safe as finite
from fl_sim.core.scoring import EVALUATORS
from fl_sim.core.store import RUNNING, StoreError, RunStore

# A run (or sweep/audit folder) id: a plain folder name. Anything else is never looked up.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# The figures a folder may show, by name: nothing else in a folder is ever served.
FIGURES = ("sweep.png", "audit_plot.png", "audit_panel.png")
# The grid's colour is this evaluator's similarity (the context lines are computed with it too).
GRID_EVALUATOR = "sface"
PHOTOS_SHOWN = 16


class NotFound(Exception):
    """An id in a URL that names nothing here: the page answers 404."""


def folder(runs_dir: Path, name: str) -> Path:
    """The folder ``name`` directly under ``runs_dir``. The name is matched against the folder's own listing (never
    joined into a path first), so ``..``, absolute paths, separators and symlinks out of it are ``NotFound``."""
    if not _ID.match(name) or ".." in name:
        raise NotFound(name)
    try:
        names = {p.name for p in runs_dir.iterdir()}
    except OSError:
        raise NotFound(name) from None
    d = runs_dir / name
    if name not in names or d.is_symlink() or not d.is_dir() or d.resolve().parent != runs_dir.resolve():
        raise NotFound(name)
    return d


@contextmanager
def opened(runs_dir: Path, run_id: str) -> Iterator[RunStore]:
    """The run's store, opened read-only (SQLite ``mode=ro``), closed after use."""
    d = folder(runs_dir, run_id)
    if not (d / "store.sqlite").is_file():
        raise NotFound(run_id)
    st = RunStore(d / "store.sqlite", readonly=True)
    try:
        yield st
    finally:
        st.close()


def config_summary(cfg: dict[str, Any]) -> dict[str, Any]:
    """The run's shape in a few fields, for the runs table and the run page's header."""
    data, model, attack = cfg.get("data", {}), cfg.get("model", {}), cfg.get("attack", {})
    adv = cfg.get("adversary") or {}
    return {"users": cfg.get("users"), "rounds": cfg.get("rounds"), "protocol": cfg.get("protocol"),
            "task": cfg.get("task"), "dataset": data.get("dataset"), "image_size": data.get("image_size"),
            "model": model.get("name"), "seed": cfg.get("seed"), "clients_per_round": cfg.get("clients_per_round"),
            "attack": ({"methods": attack.get("methods"), "every": attack.get("every")}
                       if attack.get("enabled") else None),
            "adversary": ({"mode": adv.get("mode"), "tactic": adv.get("tactic")}
                          if adv and adv.get("mode", "curious") != "curious" else None)}


def defenses_in_use(users: list[dict[str, Any]]) -> dict[str, int]:
    """Each defense some user trains under, with how many users do."""
    out: dict[str, int] = {}
    for u in users:
        for name in (u.get("defenses") or {}):
            out[name] = out.get(name, 0) + 1
    return dict(sorted(out.items()))


def progress(st: RunStore) -> dict[str, Any]:
    """Where the run is: its status, rounds done of planned, attacks by status."""
    run = st.run()
    counts = st.counts()
    planned = (run.get("config") or {}).get("rounds")
    attacks = counts["attacks"]
    text = f"round {counts['rounds']} of {planned}"
    if attacks:
        order = ["finished", "running", "queued", "no-signal", "failed", "unfinished"]
        text += " · attacks " + ", ".join(f"{attacks[k]} {k}" for k in sorted(attacks, key=lambda k: (
            order.index(k) if k in order else len(order), k)))
    return {"status": run.get("status"), "rounds_done": counts["rounds"], "rounds": planned, "attacks": attacks,
            "text": text, "error": run.get("error"), "seconds": run.get("seconds")}


def runs_index(runs_dir: Path) -> dict[str, Any]:
    """Every run under ``runs_dir`` (newest first) with status, config summary, defenses, adversary and progress;
    a run whose store cannot be read says why and the others still list; and every sweep/audit folder."""
    runs: list[dict[str, Any]] = []
    folders: list[dict[str, Any]] = []
    if runs_dir.is_dir():
        dirs = sorted((p for p in runs_dir.iterdir() if p.is_dir() and _ID.match(p.name)),
                      key=lambda p: p.name, reverse=True)
    else:
        dirs = []
    for d in dirs:
        figures = [f for f in FIGURES if (d / f).is_file()]
        if not (d / "store.sqlite").is_file():
            if figures or (d / "sweep.json").is_file():
                folders.append({"id": d.name, "figures": figures, "sweep": (d / "sweep.json").is_file()})
            continue
        try:
            with opened(runs_dir, d.name) as st:
                run, users = st.run(), st.users()
                row = {"id": d.name, "status": run.get("status"), "created": run.get("created"),
                       "seconds": run.get("seconds"), "summary": config_summary(run.get("config") or {}),
                       "defenses": defenses_in_use(users), "progress": progress(st), "figures": figures,
                       "accuracy": st.last_accuracy()}
        except StoreError as exc:
            row = {"id": d.name, "status": "unreadable", "error": str(exc.reason), "figures": figures}
        except NotFound:
            continue
        runs.append(row)
    return finite({"runs_dir": str(runs_dir), "runs": runs, "folders": folders})


_SCORE_KEYS = ("face_similarity", "reid_rank", "identity_gain")


def _attack_view(run_id: str, a: dict[str, Any], n_users: int) -> dict[str, Any]:
    m = a.get("metrics") or {}
    ev = {e: {k: m.get(f"{e}_{k}") for k in _SCORE_KEYS} for e in EVALUATORS}
    return {"id": a["id"], "round": a["round"], "user": a["user"], "method": a["method"], "status": a["status"],
            "aggregate_size": a["aggregate_size"], "evaluators": ev, "identity_gain": m.get("identity_gain"),
            "reid_top1": m.get("reid_top1"), "n_users": n_users, "seconds": a.get("seconds"),
            "inferred": {"gender": m.get("inferred_gender"), "age_band": m.get("inferred_age_band")},
            "image": f"/runs/{run_id}/attacks/{a['id']}.png" if a.get("image") else None, "error": a.get("error"),
            "defenses": describe(a.get("defenses") or {}), "server_sees": hides_user(a.get("defenses") or {}),
            "photos_recovered": m.get("photos_recovered"), "photos_total": m.get("photos_total"),
            "per_photo": m.get("photos") if a["method"] == "imprint" else None}


def _cell(attacks: list[dict[str, Any]]) -> dict[str, Any]:
    """One grid cell: the user's attacks of one round, led by the one most similar to their photos."""
    done = [a for a in attacks if a["evaluators"][GRID_EVALUATOR]["face_similarity"] is not None]
    best = max(done, key=lambda a: a["evaluators"][GRID_EVALUATOR]["face_similarity"]) if done else None
    status = "finished" if best else attacks[0]["status"]
    lines = []
    for a in attacks:
        scores = ", ".join(f"{e} {a['evaluators'][e]['face_similarity']:.2f} (rank {a['evaluators'][e]['reid_rank']}/"
                           f"{a['n_users']})" for e in EVALUATORS if a["evaluators"][e]["face_similarity"] is not None)
        lines.append(f"{a['method']}: {scores or a['status']}")
    return {"status": status, "method": best["method"] if best else None,
            "similarity": best["evaluators"][GRID_EVALUATOR]["face_similarity"] if best else None,
            "ranks": {e: best["evaluators"][e]["reid_rank"] for e in EVALUATORS} if best else None,
            "title": "; ".join(lines)}


def grid(run_id: str, users: list[str], attacks: list[dict[str, Any]]) -> dict[str, Any]:
    """Users × attacked rounds: per cell the strongest reconstruction's similarity and its re-id ranks.
    Aggregate attacks (SecAgg+: no single user) are a row of their own."""
    rounds = sorted({a["round"] for a in attacks})
    by: dict[tuple[str | None, int], list[dict[str, Any]]] = {}
    for a in attacks:
        by.setdefault((a["user"], a["round"]), []).append(a)
    attacked = {u for u, _ in by}
    rows_users: list[str | None] = [u for u in users if u in attacked]
    if None in attacked:
        rows_users.append(None)
    rows = [{"user": u, "cells": [(_cell(by[(u, r)]) | {"round": r}) if (u, r) in by else None for r in rounds]}
            for u in rows_users]
    return {"rounds": rounds, "rows": rows, "evaluator": GRID_EVALUATOR}


def strongest_per_round(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per attacked round, the method with the highest headline identity gain, with its re-id under each evaluator."""
    out = []
    for rnd in sorted({s["round"] for s in summary}):
        rows = [s for s in summary if s["round"] == rnd and s.get("identity_gain") is not None]
        if not rows:
            continue
        best = max(rows, key=lambda s: s["identity_gain"])
        out.append({"round": rnd, "method": best["method"], "attacks": best["attacks"], "finished": best["finished"],
                     "identity_gain": best.get("identity_gain"), "identity_gain_ci": best.get("identity_gain_ci"),
                     **{f"{e}_reid_top1": best.get(f"{e}_reid_top1") for e in EVALUATORS},
                     **{f"{e}_reid_top1_ci": best.get(f"{e}_reid_top1_ci") for e in EVALUATORS},
                     "evaluators_disagree": best.get("evaluators_disagree"),
                     "others": sorted(s["method"] for s in rows if s is not best)})
    return out


def run_page(runs_dir: Path, run_id: str) -> dict[str, Any]:
    """Everything the run page shows: config, per-user defenses and ε, utility per round, the leakage grid, the
    strongest attack per round, the clients' detections."""
    from fl_sim.experiments.inspect_run import attack_summary, detection_table

    with opened(runs_dir, run_id) as st:
        run, users, rounds = st.run(), st.users(), st.rounds()
        attacks, eps = st.attacks(), st.epsilons()
        summary = attack_summary(st) if attacks else []
        detections = detection_table(st)
        prog = progress(st)
    names = [u["user"] for u in users]
    views = [_attack_view(run_id, a, len(users)) for a in attacks]
    last_eps: dict[str, float] = {}
    for (_, user), e in sorted(eps.items()):
        last_eps[user] = e
    user_rows = [{"user": u["user"], "attributes": u["attributes"], "defenses": describe(u["defenses"] or {}),
                  "server_sees": hides_user(u["defenses"] or {}), "epsilon": last_eps.get(u["user"]),
                  "n_train": u["n_train"], "attacked_rounds": len({a["round"] for a in views if a["user"] == u["user"]})}
                 for u in users]
    return finite({"id": run_id, "status": run.get("status"), "created": run.get("created"),
                   "seconds": run.get("seconds"), "error": run.get("error"), "config": run.get("config") or {},
                   "summary": config_summary(run.get("config") or {}), "defenses": defenses_in_use(users),
                   "progress": prog, "users": user_rows,
                   "utility": [{"round": r["round"], "accuracy": r["accuracy"], "train_loss": r["train_loss"],
                                "n_clients": r["n_clients"], "seconds": r["seconds"]} for r in rounds],
                   "grid": grid(run_id, names, views), "strongest": strongest_per_round(summary),
                   "detections": detections, "dp": bool(eps),
                   "figures": [f for f in FIGURES if (folder(runs_dir, run_id) / f).is_file()]})


def user_page(runs_dir: Path, run_id: str, user: str) -> dict[str, Any]:
    """One user: attributes, defenses and ε per round, their photos, then per attacked round every method's
    reconstruction with its metrics and inferred vs true attributes (and an imprint's per-photo recoveries)."""
    with opened(runs_dir, run_id) as st:
        users = {u["user"]: u for u in st.users()}
        if user not in users:
            raise NotFound(user)
        attacks = [a for a in st.attacks() if a["user"] == user]
        eps = {r: e for (r, u), e in st.epsilons().items() if u == user}
        status = st.status()
    u = users[user]
    views = [_attack_view(run_id, a, len(users)) for a in attacks]
    rounds = [{"round": r, "epsilon": eps.get(r), "attacks": [v for v in views if v["round"] == r]}
              for r in sorted({v["round"] for v in views})]
    n = min(int(u["n_train"] or 0), PHOTOS_SHOWN)
    return finite({"run": run_id, "status": status, "user": user, "attributes": u["attributes"],
                   "defenses": describe(u["defenses"] or {}), "server_sees": hides_user(u["defenses"] or {}),
                   "epsilon": eps, "photos": [f"/runs/{run_id}/users/{user}/photos/{k}.png" for k in range(n)],
                   "n_train": u["n_train"], "rounds": rounds})


def attack_image(runs_dir: Path, run_id: str, attack_id: int) -> Path:
    """The image file of attack ``attack_id``, as its row names it; it must lie inside the run's ``attacks/``."""
    d = folder(runs_dir, run_id)
    with opened(runs_dir, run_id) as st:
        rel = st.attack_image(attack_id)
    if not rel:
        raise NotFound(str(attack_id))
    path = (d / rel).resolve()
    if path.parent != (d / "attacks").resolve() or not path.is_file():
        raise NotFound(str(attack_id))
    return path


def figure(runs_dir: Path, name: str, fig: str) -> Path:
    """A sweep's or audit's figure in folder ``name``, by its fixed file name (``FIGURES``)."""
    d = folder(runs_dir, name)
    if fig not in FIGURES or not (d / fig).is_file() or (d / fig).is_symlink():
        raise NotFound(fig)
    return d / fig


_photos_lock = threading.Lock()
_photo_cache: dict[tuple[str, str, int], list[bytes]] = {}


def photo_png(runs_dir: Path, run_id: str, user: str, k: int) -> bytes:
    """PNG of the user's ``k``-th photo at the run's resolution, read from the run's dataset (as its config names
    it, never a path from the request); cached per dataset, user and size."""
    import io

    from PIL import Image

    from fl_sim.core.data import open_dataset
    from fl_sim.core.evaluators.images import to_uint8_hwc

    with opened(runs_dir, run_id) as st:
        cfg = st.run().get("config") or {}
        known = {u["user"]: u for u in st.users()}
    if user not in known or not 0 <= k < min(int(known[user]["n_train"] or 0), PHOTOS_SHOWN):
        raise NotFound(f"{user}/{k}")
    key = (str(cfg["data"]["dataset"]), user, int(cfg["data"]["image_size"]))
    with _photos_lock:
        if key not in _photo_cache:
            arr = to_uint8_hwc(open_dataset(key[0]).photos(user, key[2])[:PHOTOS_SHOWN])
            pngs = []
            for a in arr:
                buf = io.BytesIO()
                Image.fromarray(a).save(buf, format="PNG")
                pngs.append(buf.getvalue())
            _photo_cache[key] = pngs
        pngs = _photo_cache[key]
    if k >= len(pngs):
        raise NotFound(f"{user}/{k}")
    return pngs[k]


_context_lock = threading.Lock()
_context_cache: dict[str, dict[str, float]] = {}


def context(runs_dir: Path, run_id: str) -> dict[str, float]:
    """The run's similarity context (its users' own photos against each other, and against other users'), computed
    once per run by the same evaluator as the grid's colour."""
    from fl_sim.experiments.inspect_run import context_lines

    d = folder(runs_dir, run_id)
    with _context_lock:
        if run_id not in _context_cache:
            _context_cache[run_id] = finite(context_lines(d))
        return _context_cache[run_id]


def is_running(status: str | None) -> bool:
    return status == RUNNING
