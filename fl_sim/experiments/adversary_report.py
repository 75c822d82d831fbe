"""The adversary bench as text: a table per protocol (terminal and markdown) and a figure of what each server got."""

from __future__ import annotations

from pathlib import Path
from typing import Any


COLUMNS = ("tactic", "defense", "batch", "photos ≥25 dB", "… mixed bins prior-cleaned", "re-id top-1", "detected", "clients detecting",
           "honest rounds flagged", "s/user", "wall s")


def flagged_count(row: dict[str, Any]) -> int:
    """A row's flagged honest rounds; results saved before rows carried the count give it from the rate."""
    if "false_positives" in row:
        return int(row["false_positives"])
    return round((row["false_positive_rate"] or 0) * row["honest_rounds"])


def _ci(v: Any, ci: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else f"{v:.{digits}f}"


def _num(v: Any, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _cells(r: dict[str, Any]) -> list[str]:
    fp = f"{flagged_count(r)}/{r['honest_rounds']}"
    # Shares of photos to 3 places: the curious server's ceiling is one photo in 32 per user.
    return [r["tactic"], r["defense"], str(r["batch_size"]), _ci(r["photos_recovered"], r["photos_recovered_ci"], 3),
            _ci(r.get("photos_recovered_cleaned"), r.get("photos_recovered_cleaned_ci"), 3),
            _ci(r["reid_top1"], r["reid_top1_ci"]), _num(r["detected"], 2) if r["tactic"] != "curious" else "–",
            _num(r["clients_detecting"], 2), fp, _num(r["seconds_per_user"], 2), f"{r['wall_s']:.0f}"]


def doc_key(res: dict[str, Any]) -> str:
    """The markers a result's table sits between in a markdown file: one section per protocol and batch sizes."""
    c = res["config"]
    return f"bench-adversary:{c['protocol']}:b{'-'.join(map(str, c['batch_sizes']))}"


def adversary_markdown(res: dict[str, Any]) -> str:
    c = res["config"]
    fp = res["false_positives"]
    chance = f"{res['rows'][0]['reid_chance']:.2f}" if res["rows"] else "1/users"
    head = (f"{c['protocol']}, {c['users']} users of `{c.get('dataset', 'synthfaces')}` at {c.get('image_size', 32)} px, seed {c['seed']}; the attacked rounds follow "
            f"{c['warmup_rounds']} honest rounds; inconsistency targets {c['targets']} users (one per round); user-level "
            f"attacks {', '.join(c['methods'])} at {c['iterations']} iterations, per user the best of them; DP-SGD "
            f"z = {c['dp_noise_multiplier']}; 95 % intervals over users; re-id by chance {chance}.")
    lines = [head, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in res["rows"]]
    notes = []
    for r in res["rows"]:
        c2 = r.get("cleaning")
        if c2 and c2.get("mixed"):
            notes.append(f"- {r['tactic']} / {r['defense']} (batch {r['batch_size']}): of {c2['mixed']} mixed candidates, "
                         f"{c2['mixed_recovered_raw']} were within 25 dB of a photo as read and "
                         f"{c2['mixed_recovered_cleaned']} after the prior's cleaning (noise std "
                         f"{res['config'].get('imprint_clean_noise')}).")
    lines += [""] + notes if notes else []
    for ref in res.get("references", []):
        lines += ["", f"Reference (batch {ref['batch_size']}): each user's *mean photo*, taken as the one candidate, "
                      f"\"recovers\" {ref['mean_photo_photos_recovered']:.3f} of their photos under the same rule "
                      f"({ref['users_with_a_photo_within_25db_of_mean']} of {ref['users']} users have a photo within "
                      f"25 dB of it; {ref['photos_within_25db_of_mean_photo']:.2f} of all photos are) — what a "
                      f"reconstruction of the user's average look scores without recovering any one photo."]
    lines += ["", f"Honest rounds flagged by any client over the whole bench (the imprint detector's and the digest "
                  f"check's false positives): {fp['flagged']} of {fp['honest_rounds']}."]
    return "\n".join(lines)


def adversary_lines(res: dict[str, Any]) -> list[str]:
    rows = [list(COLUMNS)] + [_cells(r) for r in res["rows"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    out = ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    fp = res["false_positives"]
    for ref in res.get("references", []):
        out.append(f"reference, batch {ref['batch_size']}: the user's mean photo as the one candidate recovers "
                   f"{ref['mean_photo_photos_recovered']:.3f} of their photos at >= 25 dB")
    out.append(f"honest rounds flagged over the bench: {fp['flagged']} of {fp['honest_rounds']}")
    return out


def adversary_figure(res: dict[str, Any], path: Path, max_users: int = 4, photos: int = 4) -> Path:
    """Per user (the first inconsistency targets): ``photos`` of their photos | the curious server's reconstructions
    (no defense) | imprint's matched recoveries of those photos | inconsistency's reconstructions under SecAgg+."""
    import numpy as np
    from PIL import Image, ImageDraw

    from fl_sim.core.data import open_dataset
    from fl_sim.core.evaluators.face import to_uint8_hwc
    from fl_sim.core.store import RunStore

    runs = Path(res["runs_dir"])
    batch = res["config"]["batch_sizes"][0]
    by = {(r["tactic"], r["defense"]): r for r in res["rows"] if r["batch_size"] == batch}

    def attacks(key: tuple[str, str]) -> list[dict[str, Any]]:
        if key not in by:
            return []
        st = RunStore(runs / by[key]["run_id"] / "store.sqlite", readonly=True)
        try:
            return [a for a in st.attacks() if a["status"] == "finished" and a["image"]]
        finally:
            st.close()

    curious, imprint = attacks(("curious", "none")), attacks(("imprint", "none"))
    incons = attacks(("inconsistency", "secagg"))
    users: list[str] = []
    for rows_ in (incons, curious, imprint):  # the inconsistency targets first: they appear in every column
        users = users or list(dict.fromkeys(a["user"] for a in rows_ if a["user"]))[:max_users]
    methods = list(dict.fromkeys(a["method"] for a in curious))
    size = int(res["config"].get("image_size", 32))
    ds = open_dataset(str(res["config"].get("dataset", "synthfaces")))

    def png(rel: str) -> np.ndarray:
        for key in by.values():
            p = runs / key["run_id"] / rel
            if p.exists():
                return np.asarray(Image.open(p).convert("RGB"))
        return np.full((size, size, 3), 235, np.uint8)

    def find(rows: list[dict[str, Any]], user: str, method: str) -> dict[str, Any] | None:
        return next((a for a in rows if a["user"] == user and a["method"] == method), None)

    grey = np.full((size, size, 3), 235, np.uint8)  # nothing to show (no attack, no candidate): near-white
    gap = np.full((size, 4, 3), 255, np.uint8)

    def framed(tile: np.ndarray, ok: bool | None) -> np.ndarray:
        """A recovery with a 1-px frame: green at >= 25 dB against its matched photo, red below (None: no frame)."""
        if ok is None:
            return tile
        out = tile.copy()
        colour = (0, 200, 0) if ok else (220, 0, 0)
        out[0, :], out[-1, :], out[:, 0], out[:, -1] = colour, colour, colour, colour
        return out

    groups = [(f"{photos} of the user's photos", photos), ("curious, no defense: " + ", ".join(methods), len(methods)),
              ("imprint: matched recoveries (green >= 25 dB)", photos),
              ("inconsistency under SecAgg+: " + ", ".join(methods), len(methods))]
    rows = []
    for u in users:
        tiles = list(to_uint8_hwc(ds.photos(u, size)[:photos]))
        tiles.append(gap)
        for m in methods:
            a = find(curious, u, m)
            tiles.append(png(a["image"])[:size, :size] if a else grey)
        tiles.append(gap)
        a = find(imprint, u, "imprint")
        grid = png(a["image"]) if a else None
        ok = {int(e["photo"]): bool(e["recovered"]) for e in (a["metrics"].get("photos") or [])} if a else {}
        for j in range(photos):  # the imprint PNG: matched recoveries above the photos, one column per photo
            have = grid is not None and grid.shape[1] >= (j + 1) * size and j in ok
            tiles.append(framed(grid[:size, j * size:(j + 1) * size], ok[j]) if have and grid is not None else grey)
        tiles.append(gap)
        for m in methods:
            a = find(incons, u, m)
            tiles.append(png(a["image"])[:size, :size] if a else grey)
        rows.append(np.concatenate(tiles, axis=1))
    body = np.concatenate(rows, axis=0) if rows else np.full((size, size, 3), 255, np.uint8)
    scale = 3
    img = Image.fromarray(body).resize((body.shape[1] * scale, body.shape[0] * scale), Image.NEAREST)
    canvas = Image.new("RGB", (img.width + 80, img.height + 18), "white")  # room for the last label
    canvas.paste(img, (0, 18))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for text, n in groups:
        if n:
            draw.text((x * scale + 2, 3), text, fill="black")
        x += n * size + 4
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
