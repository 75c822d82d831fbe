"""What the command line prints for sweeps, benchmarks, prior evaluations and dataset figures."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.table import Table

from fl_sim.core.fmt import format_ci, number
from fl_sim.core.scoring import EVALUATORS


def sweep_report(doc: dict[str, Any]) -> list[RenderableType]:
    """The sweep's rows (and baseline) with intervals, then where its table and plot are."""
    t = Table(title=f"sweep over {doc['param']} ({doc['sweep_id']})")
    for c in (doc["param"], "epsilon", "accuracy", "identity gain", *(f"re-id ({ev})" for ev in EVALUATORS), "gender",
              "strongest", "run"):
        t.add_column(c)
    for r in [*doc["rows"], *([doc["baseline"]] if doc.get("baseline") else [])]:
        t.add_row(str(r["value"] if r["value"] is not None else "baseline"), number(r.get("epsilon"), 2),
                  format_ci(r.get("accuracy"), r.get("accuracy_ci"), 3),
                  format_ci(r.get("identity_gain"), r.get("identity_gain_ci"), 3) + (" ⚠" if r.get("evaluators_disagree") else ""),
                  *(format_ci(r.get(f"{ev}_reid_top1"), r.get(f"{ev}_reid_top1_ci"), 2) for ev in EVALUATORS),
                  format_ci(r.get("gender_accuracy"), r.get("gender_accuracy_ci"), 2), str(r.get("strongest_method") or "-"),
                  r["run_id"])
    return [t, f"table {doc['table']}\nplot  {doc['plot']}"]


def figure_lines(res: dict[str, Any]) -> list[str]:
    """``key: value`` per figure (floats with three decimals): bench federation, and anything flat."""
    return [f"{k}: {number(v) if isinstance(v, float) else v}" for k, v in res.items()]


def figure_table(title: str, figures: dict[str, Any]) -> Table:
    """A two-column table of named figures (floats with three decimals)."""
    t = Table(title=title)
    t.add_column("figure")
    t.add_column("value")
    for k, v in figures.items():
        t.add_row(k, number(v) if isinstance(v, float) else str(v))
    return t


def prior_eval_report(res: dict[str, Any], prior: str, memo: bool) -> list[RenderableType]:
    """PSNR per noise level: noisy, the tuned Gaussian filter, the prior's x̂0 and DDIM; then memorisation."""
    t = Table(title=f"prior {prior} as a denoiser ({res['images']} held-out user photos)")
    for c in ("sigma", "t", "noisy", "gaussian (tuned)", "prior x0", "prior DDIM"):
        t.add_column(c)
    for r in res["levels"]:
        t.add_row(str(r["sigma"]), str(r.get("t")), number(r["noisy_psnr"], 2), number(r["baseline_psnr"], 2),
                  number(r.get("prior_psnr"), 2), number(r.get("prior_ddim_psnr"), 2))
    return [t, *([f"memorisation: {res['memorization']}"] if memo else [])]


def attack_bench_report(res: dict[str, Any], protocol: str, seeds: str) -> list[RenderableType]:
    """The attack bench's rows with intervals, the paired comparisons, and any evaluator disagreement."""
    t = Table(title=f"attack bench: {protocol}, {len(res['users'])} users of {res['dataset']}, seeds {seeds} "
                    f"(95 % intervals over users; re-id by chance {res['chance_reid_top1']:.2f})")
    for c in ("round", "method", "evaluator", "batch", "re-id top-1", "mean rank", "identity gain", "null re-id",
              "gender acc", "s/user"):
        t.add_column(c)
    ci = format_ci
    for r in res["rows"]:
        t.add_row(str(r["round"]), r["method"], r["evaluator"], str(r["batch_size"]), ci(r["reid_top1"], r["reid_top1_ci"]),
                  ci(r["mean_rank"], r["mean_rank_ci"], 1), ci(r["identity_gain"], r["identity_gain_ci"], 3),
                  ci(r.get("null_reid_top1"), r.get("null_reid_top1_ci")), ci(r["gender_acc"], r["gender_acc_ci"]),
                  number(r["seconds_per_user"], 2))
    out: list[RenderableType] = [t]
    for c in res["comparisons"]:
        verdict = f"{c['lead']} leads" if c["lead"] else "no difference called"
        out.append(f"round {c['round']} batch {c['batch_size']} {c['evaluator']:>5} {c['metric']:<13} {c['a']} - {c['b']}: "
                   f"{c['difference']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]  {verdict}")
    for a in res["agreement"]:
        if a.get("reid_top1_disagree"):
            out.append(f"round {a['round']} {a['method']}: the evaluators disagree beyond their intervals; headline "
                       f"re-id is the lower ({a['reid_top1_evaluator']}) {a['reid_top1']:.2f}")
    return out
