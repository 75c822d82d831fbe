"""What `fl-sim audit` prints: the table per (μ, method) beside the bound, and how success and κ were measured."""

from __future__ import annotations

from rich.console import RenderableType
from rich.table import Table

from fl_sim.core.fmt import number
from fl_sim.experiments.audit.run import AuditResult


def audit_report(res: AuditResult, files: dict[str, str]) -> list[RenderableType]:
    """The audit's table, its success criterion, the unrelated line and κ, and the figures written."""
    faces = res.meta.get("threshold") is not None
    t = Table(title=f"visual audit: {res.meta['data']} with prior {res.meta['prior']}, {res.meta['images']} images "
                    f"({res.meta['privacy']})")
    cols = ["mu", "eps", "method", "MSE", "SSIM"] + (["face sim", "gender acc", "age acc"] if faces else []) + ["success", "bound"]
    for c in cols:
        t.add_column(c)
    bound = {b["mu"]: b["bound"] for b in res.rero_bound}
    for r in res.rows:
        if r.get("beyond_range"):
            cells = [f"{r['mu']:g}", number(r["eps"], 1), r["method"], "beyond the prior's range"] + \
                    [""] * (len(cols) - 4)
        else:
            cells = [f"{r['mu']:g}", number(r["eps"], 1), r["method"], number(r["mse"]), number(r["ssim"])]
            if faces:
                cells += [number(r["face_similarity"]), number(r.get("gender_accuracy"), 2),
                          number(r.get("age_band_accuracy"), 2)]
            cells += [number(r["success_rate"], 2), number(bound[r["mu"]], 2)]
        t.add_row(*cells)
    return [t, f"success: {res.meta['success_criterion']}",
            f"unrelated images: {res.unrelated_similarity:.3f} ({res.meta['unrelated_how']}); "
            f"kappa {res.meta['kappa']:.3f} ({res.meta['kappa_how']})",
            *(f"{k}: {v}" for k, v in files.items())]
