"""The compare page's data: several runs side by side (a sweep's, or any chosen), their privacy/utility figures,
and a sweep's or visual audit's figures when the folder has them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fl_sim.core.store import FINISHED, StoreError
from fl_sim.core.fmt import json_safe as finite
from fl_sim.web.views import FIGURES, NotFound, config_summary, defenses_in_use, folder, opened

MAX_RUNS = 24  # a comparison wider than this is a table nobody reads: the page says it cut the list


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _run_row(runs_dir: Path, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the run's row, its flattened config); a run that is not finished has no leakage/utility summary."""
    from fl_sim.experiments.sweep import run_summary

    try:
        with opened(runs_dir, run_id) as st:
            run, users = st.run(), st.users()
    except StoreError as exc:
        return {"id": run_id, "status": "unreadable", "error": exc.reason}, {}
    cfg = run.get("config") or {}
    row: dict[str, Any] = {"id": run_id, "status": run.get("status"), "summary": config_summary(cfg),
                           "defenses": defenses_in_use(users),
                           "figures": [f for f in FIGURES if (folder(runs_dir, run_id) / f).is_file()]}
    if run.get("status") == FINISHED:
        try:
            summ = run_summary(folder(runs_dir, run_id))
        except StoreError as exc:
            return {**row, "status": "unreadable", "error": exc.reason}, {}
        summ.pop("methods", None)
        row.update(summ)
    return row, _flat(cfg)


def compare_page(runs_dir: Path, run_ids: list[str], folder_id: str | None = None) -> dict[str, Any]:
    """Runs side by side: what differs in their configs, each one's utility and strongest leakage with intervals,
    and the privacy/utility points; with ``folder_id`` (a sweep or audit folder) its runs and figures too.
    An id that names no run here is ``NotFound``; a sweep's run that is gone is listed as missing."""
    fold = None
    ids = list(dict.fromkeys(run_ids))
    missing: list[str] = []
    if folder_id:
        d = folder(runs_dir, folder_id)
        fold = {"id": folder_id, "figures": [f for f in FIGURES if (d / f).is_file()], "sweep": None}
        if (d / "sweep.json").is_file():
            try:
                doc = json.loads((d / "sweep.json").read_text())
                rows = list(doc.get("rows", [])) + ([doc["baseline"]] if doc.get("baseline") else [])
                fold["sweep"] = {"param": doc.get("param"),
                                 "values": {str(r.get("run_id")): r.get("value", "baseline") for r in rows}}
                for r in rows:
                    rid = str(r.get("run_id"))
                    if rid not in ids:
                        ids.append(rid)
            except (OSError, ValueError, TypeError) as exc:
                fold["error"] = f"sweep.json: unreadable ({exc})"
        if (d / "store.sqlite").is_file() and folder_id not in ids:
            ids.insert(0, folder_id)
    rows, configs = [], []
    cut = len(ids) > MAX_RUNS
    for rid in ids[:MAX_RUNS]:
        try:
            row, cfg = _run_row(runs_dir, rid)
        except NotFound:
            if fold and fold.get("sweep") and rid in fold["sweep"]["values"]:
                missing.append(rid)
                continue
            raise
        if fold and fold.get("sweep"):
            row["sweep_value"] = fold["sweep"]["values"].get(rid)
        rows.append(row)
        configs.append(cfg)
    keys = sorted({k for c in configs for k in c})
    differs = [{"key": k, "values": [c.get(k) for c in configs], "partial": any(k not in c for c in configs)}
               for k in keys
               if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]
    points = [{"x": r.get("reid_top1"), "y": r.get("accuracy"), "label": r.get("sweep_value", r["id"]),
               "xerr": r.get("reid_top1_ci"), "id": r["id"]} for r in rows]
    chance = None
    users = {r["summary"]["users"] for r in rows if r.get("summary") and r["summary"].get("users")}
    if len(users) == 1:
        chance = 1.0 / users.pop()
    return finite({"runs": rows, "differs": differs, "points": points, "chance_reid_top1": chance,
                   "folder": fold, "missing": missing, "cut": cut})
