"""`fl-sim audit`: the visual privacy audit of DP-SGD at several μ (fl_sim/experiments/audit)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

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


def audit(mu: str = typer.Option("1,2,4,8,16,32", "--mu", help="comma-separated μ = C/σ = 1/noise multiplier"),
          data: str = typer.Option("synthfaces:users", "--data", help="audited images (never the prior's split)"),
          prior: str = typer.Option("auto", "--prior", help="auto (the embedded prior at --size) | faces32 | faces64 | "
                                    "a diffusers folder | a hub id"),
          size: Optional[int] = typer.Option(None, "--size", help="image side, 32 or 64 [default: the prior's; 32 "
                                             "with --prior auto]"),
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
    from fl_sim.cli.common import TermConsole, err, print_all, print_json, run_dir
    from fl_sim.experiments.audit import AuditSettings, plot_metrics, plot_panel, run_audit, run_settings, validate
    from fl_sim.experiments.audit.report import audit_report
    from fl_sim.experiments.progress import Bar

    eps_labels = None
    if run is not None:
        mus, eps_labels, run_data, notes = run_settings(run_dir(runs_dir, run))
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
    settings = AuditSettings(data=data, prior=prior, size=size, images=images, seed=seed, ddim_steps=ddim_steps, dc=dc,
                             samples=samples, eta=eta, steps=steps, sample_rate=sample_rate)
    with Bar(err, "audit", print_kwargs={"highlight": False}) as bar:
        res = run_audit(mus, settings, eps_labels=eps_labels, progress=lambda m: bar.say(f"audit: {m}"), step=bar.step)
    files: dict[str, str] = {}
    if out_dir is not None:
        files = {"plot": str(plot_metrics(res, out_dir / "audit_plot.png")),
                 "panel": str(plot_panel(res, out_dir / "audit_panel.png"))}
    if as_json:
        print_json({**res.to_json(), **({"files": files} if files else {})})
        return
    print_all(audit_report(res, files), TermConsole(plain_width=140))


def register(app: typer.Typer) -> None:
    """Add `audit` to the fl-sim app."""
    app.command("audit")(audit)
