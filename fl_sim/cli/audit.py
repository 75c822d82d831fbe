"""`fl-sim audit`: the visual privacy audit of DP-SGD at several μ (see fl_sim/audit.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer

from fl_sim.core.errors import FlSimError


def parse_mus(text: str) -> list[float]:
    """'1,2,4,8' -> [1.0, 2.0, 4.0, 8.0]; a one-line error naming --mu otherwise."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FlSimError(f"--mu: expected numbers like 1,2,4,8, got {text!r}") from None
    if not values:
        raise FlSimError(f"--mu: expected numbers like 1,2,4,8, got {text!r}")
    bad = [v for v in values if not (v > 0 and math.isfinite(v))]
    if bad:
        raise FlSimError(f"--mu: expected positive finite values, got {bad[0]:g} in {text!r}")
    return values


def run_settings(run_dir: Path) -> tuple[list[float], list[float | None], str, list[str]]:
    """The DP-SGD settings a run's users actually had: (mus, eps labels, the run's dataset, notes).

    One μ = 1/z per distinct noise multiplier; its ε label is the largest ε the run's store recorded for
    users with that z (their accountant after their last round), so the panel reads in the run's own terms.
    """
    from fl_sim.core.store import RunStore

    st = RunStore(run_dir / "store.sqlite", readonly=True)
    try:
        users, updates, cfg = st.users(), st.updates(), st.run()["config"]
    finally:
        st.close()
    zs: dict[float, list[str]] = {}
    for u in users:
        dp = (u.get("defenses") or {}).get("dp_sgd")
        if dp:
            zs.setdefault(float(dp["noise_multiplier"]), []).append(u["user"])
    if not zs:
        raise FlSimError(f"--run {run_dir.name}: no user trained under DP-SGD, so there is no DP-SGD setting to audit")
    notes, mus, eps = [], [], []
    for z, who in sorted(zs.items()):
        if z <= 0:
            notes.append(f"{len(who)} user(s) had z=0 (clipping only): no noise, the first-layer extraction is exact")
            continue
        recorded = [float(up["metrics"]["dp-epsilon"]) for up in updates
                    if up["user"] in who and "dp-epsilon" in up["metrics"]]
        mus.append(1.0 / z)
        eps.append(max(recorded) if recorded else None)
        notes.append(f"{len(who)} user(s) at z={z:g} (mu={1 / z:.3g}), epsilon {max(recorded):.3g} after the run"
                     if recorded else f"{len(who)} user(s) at z={z:g}")
    if not mus:
        raise FlSimError(f"--run {run_dir.name}: every DP-SGD user had z=0; " + notes[0])
    return mus, eps, str(cfg["data"]["dataset"]), notes


def register(app: typer.Typer) -> None:
    """Add `audit` to the fl-sim app."""

    @app.command("audit")
    def audit(mu: str = typer.Option("1,2,4,8,16,32", "--mu", help="comma-separated μ = C/σ = 1/noise multiplier"),
              data: str = typer.Option("synthfaces:users", "--data", help="audited images (never the prior's split)"),
              prior: str = typer.Option("faces32", "--prior", help="faces32 (embedded) | a diffusers folder | a hub id"),
              images: int = typer.Option(16, "--images", help="how many images to audit"),
              seed: int = typer.Option(0, "--seed"),
              ddim_steps: Optional[int] = typer.Option(None, "--ddim-steps", help="reverse steps from t(μ) to 0 [default: 10]"),
              dc: Optional[float] = typer.Option(None, "--dc", help="data-consistency strength toward the observation [default: 0 = off]"),
              samples: Optional[int] = typer.Option(None, "--samples", help="average this many posterior samples [default: 8]"),
              eta: Optional[float] = typer.Option(None, "--eta", help="DDIM stochasticity, 0 = deterministic [default: 1]"),
              steps: int = typer.Option(1, "--steps", help="DP-SGD steps for the ε label (1: one Gaussian release)"),
              sample_rate: float = typer.Option(1.0, "--sample-rate", help="Poisson sampling rate for the ε label"),
              out_dir: Optional[Path] = typer.Option(None, "--out", help="folder for audit_plot.png and audit_panel.png"),
              run: Optional[str] = typer.Option(None, "--run", help="audit the DP-SGD settings this run's users had"),
              runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="where --run looks"),
              as_json: bool = typer.Option(False, "--json", help="print the result as JSON")) -> None:
        """What an informed adversary with an image prior recovers from one DP-SGD gradient, per μ, beside the bound."""
        from rich.console import Console
        from rich.table import Table

        from fl_sim.experiments.audit import AuditSettings, plot_metrics, plot_panel, run_audit, validate
        from fl_sim.cli import _fmt, _json  # the CLI's own formatting (this module is imported by fl_sim.cli)

        err = Console(stderr=True, width=120)
        eps_labels = None
        if run is not None:
            from fl_sim.cli import _run_dir

            mus, eps_labels, run_data, notes = run_settings(_run_dir(runs_dir, run))
            if data == "synthfaces:users":  # not given: the run's own users' dataset
                data = run_data
            for n in notes:
                err.print(f"audit --run {run}: {n}", highlight=False)
        else:
            mus = parse_mus(mu)
        validate(mus, images)
        # Unset options take the measured defaults of AuditSettings (one place for them).
        base = AuditSettings()
        ddim_steps = base.ddim_steps if ddim_steps is None else ddim_steps
        dc = base.dc if dc is None else dc
        samples = base.samples if samples is None else samples
        eta = base.eta if eta is None else eta
        if ddim_steps < 1:
            raise FlSimError(f"--ddim-steps: expected at least 1, got {ddim_steps}")
        if samples < 1 or (samples > 1 and eta <= 0):
            raise FlSimError(f"--samples {samples}: needs to be >= 1, and --eta > 0 when > 1 (else the samples are identical)")
        if steps < 1 or not (0 < sample_rate <= 1):
            raise FlSimError(f"--steps {steps} / --sample-rate {sample_rate}: expected steps >= 1 and 0 < rate <= 1")
        settings = AuditSettings(data=data, prior=prior, images=images, seed=seed, ddim_steps=ddim_steps, dc=dc,
                                 samples=samples, eta=eta, steps=steps, sample_rate=sample_rate)
        res = run_audit(mus, settings, eps_labels=eps_labels, progress=lambda m: err.print(f"audit: {m}", highlight=False))
        files = {}
        if out_dir is not None:
            files = {"plot": str(plot_metrics(res, out_dir / "audit_plot.png")),
                     "panel": str(plot_panel(res, out_dir / "audit_panel.png"))}
        if as_json:
            _json({**res.to_json(), **({"files": files} if files else {})})
            return
        out = Console(width=140)
        faces = res.meta.get("threshold") is not None
        t = Table(title=f"visual audit: {data} with prior {prior}, {images} images ({res.meta['privacy']})")
        cols = ["mu", "eps", "method", "MSE", "SSIM"] + (["face sim", "gender acc", "age acc"] if faces else []) + ["success", "bound"]
        for c in cols:
            t.add_column(c)
        bound = {b["mu"]: b["bound"] for b in res.rero_bound}
        for r in res.rows:
            if r.get("beyond_range"):
                cells = [f"{r['mu']:g}", _fmt(r["eps"], 1), r["method"], "beyond the prior's range"] + \
                        [""] * (len(cols) - 4)
            else:
                cells = [f"{r['mu']:g}", _fmt(r["eps"], 1), r["method"], _fmt(r["mse"]), _fmt(r["ssim"])]
                if faces:
                    cells += [_fmt(r["face_similarity"]), _fmt(r.get("gender_accuracy"), 2), _fmt(r.get("age_band_accuracy"), 2)]
                cells += [_fmt(r["success_rate"], 2), _fmt(bound[r["mu"]], 2)]
            t.add_row(*cells)
        out.print(t)
        out.print(f"success: {res.meta['success_criterion']}")
        out.print(f"unrelated images: {res.unrelated_similarity:.3f} ({res.meta['unrelated_how']}); "
                  f"kappa {res.meta['kappa']:.3f} ({res.meta['kappa_how']})")
        for k, v in files.items():
            out.print(f"{k}: {v}")
