"""What the command line prints about runs: the runs list, a run's rounds, its attacks, and the demo's pointers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import RenderableType
from rich.table import Table

from fl_sim.core.fmt import format_ci, number
from fl_sim.core.names import EVALUATORS
from fl_sim.core.store import RunStore


def runs_table(rows: list[dict[str, Any]], runs_dir: Path) -> Table:
    """Every run in ``runs_dir``, newest first, with its status."""
    t = Table(title=f"runs in {runs_dir}")
    for c in ("run", "status", "rounds", "users", "held-out acc", "seconds"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["id"], str(r.get("status")), f"{r.get('rounds_done', '-')}/{r.get('rounds', '-')}",
                  str(r.get("users", "-")), number(r.get("accuracy")), number(r.get("seconds"), 1))
    return t


def rounds_report(run_dir: Path) -> list[RenderableType]:
    """The run's rounds as a table, and the held-out accuracy from the first round to the last."""
    st = RunStore(run_dir / "store.sqlite", readonly=True)
    rounds = st.rounds()
    st.close()
    t = Table(title=f"rounds of {run_dir.name}")
    for c in ("round", "clients", "train loss", "held-out acc", "per head", "seconds"):
        t.add_column(c)
    for r in rounds:
        ev = r["metrics"].get("evaluate", {})
        heads = " ".join(f"{k[4:]}={number(v, 2)}" for k, v in ev.items() if k.startswith("acc_"))
        t.add_row(str(r["round"]), str(r["n_clients"]), number(r["train_loss"]), number(r["accuracy"]), heads,
                  f"{r['seconds']:.1f}")
    out: list[RenderableType] = [t]
    if len(rounds) >= 2 and rounds[0]["accuracy"] is not None and rounds[-1]["accuracy"] is not None:
        delta = rounds[-1]["accuracy"] - rounds[0]["accuracy"]
        out.append(f"held-out accuracy round 1 -> {rounds[-1]['round']}: {number(rounds[0]['accuracy'])} -> "
                   f"{number(rounds[-1]['accuracy'])} ({'+' if delta >= 0 else ''}{delta:.3f})")
    return out


# The whole-run table shows this many attack rows (a 1,000-attack run's table is neither readable nor quick to
# draw: ~0.75 s in rich); the summary lines still cover every round, and --all, --user, --round or --json show more.
TABLE_ROWS = 200


def attacks_report(rows: list[dict[str, Any]], title: str, limit: int | None = None) -> list[RenderableType]:
    """Attacked rounds per user (both evaluators), then which defenses hide a single user's update.
    ``limit``: at most this many rows, by user then round, and a line saying how many more there are."""
    t = Table(title=title)
    for c in ("round", "user", "method", "status", *(f"{ev} sim / rank" for ev in EVALUATORS), "identity gain",
              "gender (inferred/true)", "age (inferred/true)", "defenses"):
        t.add_column(c)
    ordered = sorted(rows, key=lambda r: (str(r["user"]), r["round"], r["method"]))
    shown = ordered if limit is None else ordered[:limit]
    hidden = len(ordered) - len(shown)
    for r in shown:
        who = r["user"] if r["user"] is not None else f"aggregate of {r['aggregate_size']}"
        cells = []
        for ev in EVALUATORS:
            if r["user"] is None and r.get(f"{ev}_best_match") is not None:  # an aggregate: its best-matching user
                cells.append(f"{number(r[f'{ev}_best_match_similarity'])} ({r[f'{ev}_best_match']})")
            elif r.get(f"{ev}_reid_rank") is not None:
                cells.append(f"{number(r[f'{ev}_face_similarity'])} / {r[f'{ev}_reid_rank']}/{r['n_users']}")
            else:
                cells.append("-")
        t.add_row(str(r["round"]), who, r["method"], r["status"], *cells, number(r.get("identity_gain")),
                  f"{r['inferred_gender'] or '-'}/{r['true_gender'] or '-'}",
                  f"{r['inferred_age_band'] or '-'}/{r['true_age_band'] or '-'}",
                  r["defenses"] + (f" (eps {r['dp_epsilon']:.3g})" if r.get("dp_epsilon") is not None else ""))
    out: list[RenderableType] = [t]
    if hidden:
        out.append(f"... and {hidden} more attack rows of {len(ordered)} (--all shows them; --user U or --round R "
                   f"narrows; --json has every row)")
    # Which defenses hide a single user's update from this server, and which only look like they do.
    for d, sees in sorted({(r["defenses"], r["server_sees"]) for r in rows}):
        out.append(f"defenses {d}: {sees}")
    return out


def summary_lines(summary: list[dict[str, Any]]) -> list[str]:
    """Per round and method, both evaluators with 95 % intervals over users; a disagreement is flagged."""
    lines = []
    for e in summary:
        if not e["finished"]:
            lines.append(f"round {e['round']} {e['method']}: nothing scored ({e['no_signal']} no-signal of {e['attacks']})")
            continue
        evs = "; ".join(f"{ev} re-id {format_ci(e[f'{ev}_reid_top1'], e[f'{ev}_reid_top1_ci'])}" for ev in EVALUATORS
                        if e.get(f"{ev}_reid_top1") is not None)
        flag = "  ⚠ the evaluators disagree beyond their intervals (headline: the lower)" if e["evaluators_disagree"] else ""
        lines.append(f"round {e['round']} {e['method']}: {evs or 'aggregate'}; identity gain "
                     f"{format_ci(e['identity_gain'], e['identity_gain_ci'], 3)}{flag}")
    return lines


def detection_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per round, what the clients' model check saw (``defenses.model_check``), beside the server's tactic."""
    lines = []
    for r in rows:
        server = f"{r['tactic']} on {', '.join(r['targets'])}" if r["tactic"] else "honest"
        found = "; ".join(f"{k} by {', '.join(r[k])}" for k in ("inconsistent", "imprint", "refused") if r[k])
        lines.append(f"round {r['round']} model check ({server}): {r['checked']} clients checked, "
                     f"{r['could_compare']} could compare, {r['digests']} distinct model(s): "
                     f"{found or 'nothing flagged'}")
    return lines


def context_text(ctx: dict[str, float]) -> str:
    """How similar a user's own photos are to each other, and different users' photos: the scale of a score."""
    return (f"context: a user's own photos match each other at {ctx['within_user_min']:.2f}..{ctx['within_user_max']:.2f} "
            f"(mean {ctx['within_user_mean']:.2f}); different users at {ctx['between_user_mean']:.2f} on average"
            + (f" (over a seeded sample of {int(ctx['users'])} of the run's users)" if ctx.get("sampled") else ""))


def no_attacks_line(name: str, run: dict[str, Any]) -> str:
    """Why a run has no attack rows: attacks were off, or the run ended before any ran (and what was configured)."""
    att = run.get("config", {}).get("attack", {})
    if not att.get("enabled"):
        return f"run {name} has no attacks (set attack.enabled=true)"
    when = (f"rounds {', '.join(map(str, att['rounds']))}" if att.get("rounds")
            else f"every {att.get('every', 1)} round(s) from round 1")
    return (f"run {name} ({run.get('status')}, {run.get('config', {}).get('rounds')} rounds configured) ran no attack "
            f"before it ended; configured: methods {', '.join(att.get('methods') or []) or '-'}, {when}, "
            f"users {att.get('users', 'all')}")


def inspect_report(run_dir: Path, user: str | None = None, rnd: int | None = None,
                   limit: int | None = TABLE_ROWS) -> tuple[dict[str, Any], list[RenderableType]]:
    """`fl-sim inspect`: (the JSON document, what the table view prints) for one user's panel or the whole run.
    ``limit``: the whole run's table shows at most this many attack rows (None: all); the document has all."""
    from fl_sim.experiments.inspect_run import (attack_summary, attack_table, context_lines, detected_share,
                                                detection_table, imprint_lines, imprint_rows, user_panel)

    if user is not None:
        ctx = context_lines(run_dir)
        path, rows = user_panel(run_dir, user, rnd, context=ctx)
        st = RunStore(run_dir / "store.sqlite", readonly=True)
        try:
            own = [a for a in st.attacks() if a["user"] == user and (rnd is None or a["round"] == rnd)]
        finally:
            st.close()
        doc: dict[str, Any] = {"panel": str(path), "attacks": rows, "context": ctx}
        if imprint := imprint_rows(own):
            doc["imprint"] = imprint
        return (doc, [*attacks_report(rows, f"user {user}"), *imprint_lines(own), context_text(ctx), f"panel: {path}"])
    st = RunStore(run_dir / "store.sqlite", readonly=True)
    try:
        rows, summary, run, raw = attack_table(st), attack_summary(st), st.run(), st.attacks()
        detection = detection_table(st)
    finally:
        st.close()
    if rnd is not None:  # one round of the whole run
        rows, raw = [r for r in rows if r["round"] == rnd], [a for a in raw if a["round"] == rnd]
        summary = [e for e in summary if e["round"] == rnd]
        detection = [d for d in detection if d["round"] == rnd]
    doc = {"attacks": rows, "summary": summary}
    if detection:  # the clients checked what they received (defenses.model_check)
        doc.update({"detection": detection, "detected": detected_share(detection)})
    if not rows:
        return doc, [no_attacks_line(run_dir.name, run), *detection_lines(detection)]
    if imprint := imprint_rows(raw):  # a malicious server's per-photo recoveries
        doc["imprint"] = imprint
    return doc, [*attacks_report(rows, f"attacks in {run_dir.name}", limit), *summary_lines(summary), *imprint_lines(raw),
                 *detection_lines(detection)]


def demo_report(run_dir: Path, runs_dir: Path) -> Iterator[RenderableType]:
    """After the demo's run: its attacks and summary, one panel per attacked user, and where to look next.

    A generator, so the tables are printed before the panels are drawn.
    """
    from fl_sim.experiments.inspect_run import attack_summary, attack_table, context_lines, user_panel

    st = RunStore(run_dir / "store.sqlite", readonly=True)
    rows, summary = attack_table(st), attack_summary(st)
    st.close()
    yield from attacks_report(rows, f"attacks in {run_dir.name}")
    yield from summary_lines(summary)
    ctx = context_lines(run_dir)
    panels = [user_panel(run_dir, u, context=ctx)[0] for u in sorted({r["user"] for r in rows if r["user"]})]
    yield context_text(ctx)
    yield "\nwhere to look:"
    yield f"  {run_dir / 'panels'}/   # one PNG per attacked user ({len(panels)}): photos | each reconstruction"
    yield f"  fl-sim inspect {run_dir.name} --runs-dir {runs_dir} [--user U] [--round R] [--json]"
    yield f"  fl-sim export {run_dir.name} --runs-dir {runs_dir}   # everything about the run, as JSON"
    yield f"  fl-sim runs --runs-dir {runs_dir}                       # every run and its status"
    yield f"  {run_dir / 'store.sqlite'}   # the run store (SQLite)"
    yield "\nbrowse it (every attacked round per user, live while a run goes; Ctrl-C stops the server):"
    yield f"  fl-sim serve --runs-dir {runs_dir}    # then open http://127.0.0.1:8765/runs/{run_dir.name}"
