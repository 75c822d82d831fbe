"""`fl-sim inspect`: attacked rounds per user, and a PNG panel per user and round."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np

from fl_sim.core.errors import FlSimError
from fl_sim.core.names import EVALUATORS, EXACT_UPDATE
from fl_sim.core.store import RunStore


def defended(rec: dict[str, Any]) -> tuple[str, str]:
    """(the user's defenses in a line, what the server sees of them). An undefended user needs no registry: reading
    a run then imports no defense (nor torch, which they need), so `fl-sim inspect` starts fast."""
    if not rec:
        return "none", EXACT_UPDATE
    from fl_sim.core.defenses import describe, hides_user

    return describe(rec), hides_user(rec)


def attack_table(store: RunStore) -> list[dict[str, Any]]:
    """One row per attack with the figures a reader compares: similarity, rank, attributes."""
    users = {u["user"]: u for u in store.users()}
    # Each user's DP-SGD epsilon after each round (None without DP-SGD noise), read once.
    eps = store.epsilons()
    rows = []
    for a in store.attacks():
        m = a["metrics"]
        truth = users.get(a["user"], {}).get("attributes", {}) if a["user"] else {}
        per_eval = {f"{ev}_{k}": m.get(f"{ev}_{k}") for ev in EVALUATORS
                    for k in ("face_similarity", "reid_rank", "identity_gain", "best_match", "best_match_similarity")}
        rows.append({"round": a["round"], "user": a["user"], "aggregate_size": a["aggregate_size"], "method": a["method"],
                     "status": a["status"], **per_eval, "reid_rank": m.get("reid_rank"), "reid_top1": m.get("reid_top1"),
                     "identity_gain": m.get("identity_gain"),
                     "n_users": len(users), "inferred_gender": m.get("inferred_gender"), "true_gender": truth.get("gender"),
                     "inferred_age_band": m.get("inferred_age_band"), "true_age_band": truth.get("age_band"),
                     "image": a["image"], "error": a["error"],
                     **dict(zip(("defenses", "server_sees"), defended(a["defenses"] or {}))),
                     "dp_epsilon": eps.get((a["round"], a["user"]))})
    return rows


def attack_summary(store: RunStore) -> list[dict[str, Any]]:
    """Per attacked round and method: re-id and identity gain under each evaluator with 95 %
    intervals over users, the lower headline, and whether the evaluators disagree beyond them."""
    from fl_sim.core.leakage import summarize

    attacks = store.attacks()
    out = []
    for rnd, method in sorted({(a["round"], a["method"]) for a in attacks}):
        rows = [a for a in attacks if a["round"] == rnd and a["method"] == method]
        done = [a for a in rows if a["status"] == "finished"]
        entry: dict[str, Any] = {"round": rnd, "method": method, "attacks": len(rows), "finished": len(done),
                                 "no_signal": sum(a["status"] == "no-signal" for a in rows)}
        if done:
            summ = summarize([a["metrics"] for a in done],
                             [a["user"] if a["user"] is not None else "aggregate" for a in done])
            entry.update({k: summ.get(k) for k in ("reid_top1", "reid_top1_ci", "reid_top1_evaluator",
                                                   "identity_gain", "identity_gain_ci")})
            entry["evaluators_disagree"] = summ["evaluators_disagree"]
            for ev in EVALUATORS:
                e = summ["evaluators"][ev]
                entry.update({f"{ev}_reid_top1": e["reid_top1"], f"{ev}_reid_top1_ci": e["reid_top1_ci"],
                              f"{ev}_identity_gain": e["identity_gain"], f"{ev}_identity_gain_ci": e["identity_gain_ci"]})
        out.append(entry)
    return out


def detection_table(store: RunStore, check: str = "model_check") -> list[dict[str, Any]]:
    """Per round the clients' check of what they received (``defenses.model_check``): how many checked, how many
    could compare (saw another digest: arrival order), who flagged an inconsistent or imprint-like model, who
    refused; beside what the malicious server did that round (its tactic and targets; none: an honest round)."""
    tactic = {r["round"]: r["metrics"].get("adversary") for r in store.rounds()}
    rows = []
    for rnd, by_user in sorted(store.checks(check).items()):
        note = tactic.get(rnd) or {}

        def who(key: str, by_user: dict[str, dict[str, Any]] = by_user) -> list[str]:
            return sorted(u for u, r in by_user.items() if r.get(key))

        inconsistent, imprint, refused = who("inconsistent"), who("imprint"), who("refused")
        rows.append({"round": rnd, "tactic": note.get("tactic"), "targets": note.get("targets", []),
                     "checked": len(by_user), "could_compare": sum(int(r.get("saw", 0)) > 0 for r in by_user.values()),
                     "digests": len({r.get("digest") for r in by_user.values()}),
                     "inconsistent": inconsistent, "imprint": imprint, "refused": refused,
                     "flagged": bool(inconsistent or imprint)})
    return rows


def detected_share(rows: list[dict[str, Any]]) -> float | None:
    """The share of checked rounds some client flagged (None: no client checked)."""
    return sum(r["flagged"] for r in rows) / len(rows) if rows else None


def user_panel(run_dir: Path, user: str, rnd: int | None = None, out: Path | None = None,
               context: dict[str, float] | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """PNG: the user's photos, then each method's reconstruction per attacked round, labelled,
    with the context lines that say what a similarity means (within-user range, between users)."""
    from PIL import Image, ImageDraw

    from fl_sim.core.data import open_dataset
    from fl_sim.core.evaluators.face import to_uint8_hwc

    store = RunStore(run_dir / "store.sqlite", readonly=True)
    try:
        cfg = store.run()["config"]
        users = {u["user"]: u for u in store.users()}
        if user not in users:
            raise FlSimError(f"no user {user!r} in run {run_dir.name} (users: {', '.join(sorted(users))})")
        rows = [r for r in attack_table(store) if r["user"] == user and (rnd is None or r["round"] == rnd)]
        if not rows:
            raise FlSimError(f"user {user!r} was not attacked in run {run_dir.name}"
                             + (f" round {rnd}" if rnd is not None else ""))
    finally:
        store.close()
    ds = open_dataset(cfg["data"]["dataset"])
    size = cfg["data"]["image_size"]
    photos = to_uint8_hwc(ds.photos(user, size)[:8])
    tile = 96
    rounds = sorted({r["round"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    w = 8 * tile
    h = tile + 46 + len(rounds) * (tile + 24)
    panel = Image.new("RGB", (max(w, len(methods) * (tile + 200)), h), "white")
    draw = ImageDraw.Draw(panel)
    attrs = users[user]["attributes"]
    for i, p in enumerate(photos):
        panel.paste(Image.fromarray(p).resize((tile, tile), Image.NEAREST), (i * tile, 0))
    draw.text((4, tile + 6), f"user {user}: true gender {attrs.get('gender')}, age {attrs.get('age_band')} "
                             f"(first 8 of their photos above)", fill="black")
    if context:
        draw.text((4, tile + 22), f"similarity context: this run's users match their own photos at "
                                  f"{context['within_user_min']:.2f}..{context['within_user_max']:.2f} "
                                  f"(mean {context['within_user_mean']:.2f}), other users at "
                                  f"{context['between_user_mean']:.2f}", fill="black")
    y = tile + 46
    for rr in rounds:
        for j, m in enumerate(methods):
            row = next((r for r in rows if r["round"] == rr and r["method"] == m), None)
            x = j * (tile + 200)
            if row is None:
                continue
            if row["image"] and (run_dir / row["image"]).exists():
                panel.paste(Image.open(run_dir / row["image"]).convert("RGB").resize((tile, tile), Image.NEAREST), (x, y))
            scored = row["status"] == "finished" and row["sface_face_similarity"] is not None
            text = (f"round {rr} {m} [{row['status']}]\n"
                    + "".join(f"{ev}: sim {row[f'{ev}_face_similarity']:.2f} rank {row[f'{ev}_reid_rank']}/{row['n_users']}\n"
                              for ev in EVALUATORS if row.get(f"{ev}_face_similarity") is not None)
                    + f"gain {row['identity_gain']:+.3f}\n"
                    f"gender {row['inferred_gender']}, age {row['inferred_age_band']}") if scored else \
                f"round {rr} {m}\n[{row['status']}]\n{(row['error'] or '')[:40]}"
            draw.text((x + tile + 6, y + 2), text, fill="black")
        y += tile + 24
    out = out or run_dir / "panels" / f"{user}{'' if rnd is None else f'_r{rnd:03d}'}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    panel.save(out)
    return out, rows


CONTEXT_USERS = 100


def context_lines(run_dir: Path) -> dict[str, Any]:
    """Within-user and between-user similarity of the run's users (the lines beside every figure); in a run of more
    than ``CONTEXT_USERS`` users, of a seeded sample of that many (``users`` in the result says how many)."""
    from fl_sim.core.data import open_dataset
    from fl_sim.core.scoring import UserTruth

    store = RunStore(run_dir / "store.sqlite", readonly=True)
    cfg = store.run()["config"]
    users = [u["user"] for u in store.users()]
    attrs = {u["user"]: u["attributes"] for u in store.users()}
    store.close()
    sampled = len(users) > CONTEXT_USERS
    if sampled:  # a large run: a seeded sample of its users (embedding every photo would take minutes)
        users = sorted(random.Random(f"context:{cfg.get('seed')}").sample(users, CONTEXT_USERS))
    ds = open_dataset(cfg["data"]["dataset"])
    n = cfg["data"]["photos_per_user"]
    # The context lines are SFace's (what the panels print): no need to embed every photo with dlib too.
    truth = UserTruth(users, {u: ds.photos(u, cfg["data"]["image_size"])[:n] for u in users}, attrs,
                      evaluators=("sface",))
    return {**{k: float(np.round(v, 3)) for k, v in truth.context().items()}, "users": len(users), "sampled": sampled}


def imprint_rows(attacks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per finished imprint read-out (a malicious server's tactic imprint): the per-photo recoveries in figures."""
    out = []
    for a in attacks:
        m = a.get("metrics") or {}
        if a.get("method") != "imprint" or a.get("status") != "finished":
            continue
        total = int(m.get("photos_total") or 0)
        out.append({"round": a["round"], "user": a["user"], "photos_total": total,
                    "photos_recovered": m.get("photos_recovered"),
                    "recovered": round(float(m.get("photos_recovered") or 0.0) * total),
                    "threshold_db": m.get("recovered_psnr_threshold", 25.0),
                    "psnr_matched_mean": m.get("psnr_matched_mean"), "ssim_matched_mean": m.get("ssim_matched_mean"),
                    "reid_top1_best": m.get("reid_top1"), "reid_top1_mean": m.get("mean_recovery_reid_top1"),
                    "candidates": m.get("candidates"), "candidates_mixed": m.get("candidates_mixed"),
                    "image": a.get("image"), "photos": m.get("photos", [])})
    return out


def imprint_lines(attacks: list[dict[str, Any]]) -> list[str]:
    """One line per attacked user and round of an imprint read-out (empty when the run has none)."""
    rows = imprint_rows(attacks)
    if not rows:
        return []

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    lines = ["per-photo recoveries (tactic imprint; a photo counts at >= 25 dB PSNR to its matched true photo):"]
    for r in rows:
        lines.append(f"  round {r['round']} {r['user']}: {r['recovered']}/{r['photos_total']} photos recovered "
                     f"({f(r['photos_recovered'], '.0%')}), mean PSNR of matches {f(r['psnr_matched_mean'], '.1f')} dB, "
                     f"re-id top-1 best {f(r['reid_top1_best'], 'd')} / mean {f(r['reid_top1_mean'], 'd')}, "
                     f"{r['candidates']} candidates ({r['candidates_mixed']} mixed)"
                     + (f", grid {r['image']}" if r["image"] else ""))
    return lines
