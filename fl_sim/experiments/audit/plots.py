"""The audit's figures: metrics against μ beside the bound, and the original | reconstruction panel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fl_sim.experiments.audit.run import METHODS, AuditResult


def _eps_text(eps: float | None) -> str:
    if eps is None:
        return "ε ?"
    return f"ε={eps:.0f}" if eps >= 10 else f"ε={eps:.1f}"


def plot_metrics(result: AuditResult, path: Path) -> Path:
    """Metric vs μ: raw | classical | diffusion, the dashed unrelated line, the ReRo bound on success."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faces = result.meta.get("threshold") is not None
    panels = [("mse", "MSE (lower is better)"), ("ssim", "SSIM"),
              ("face_similarity" if faces else None, "face similarity (SFace cosine)"), ("success_rate", "success rate")]
    panels = [p for p in panels if p[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    colors = {"raw": "#999999", "classical": "#1f77b4", "diffusion": "#d62728"}
    labels = {"raw": "raw observation", "classical": "classical (Wiener)", "diffusion": "diffusion prior"}
    for ax, (key, title) in zip(axes, panels):
        for m in METHODS:
            pts = [(r["mu"], r[key]) for r in result.rows if r["method"] == m and r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", color=colors[m], label=labels[m])
        if (key == "face_similarity") or (key == "ssim" and not faces):
            ax.axhline(result.unrelated_similarity, ls="--", color="k", lw=1, label="unrelated images (tells nothing)")
        if key == "face_similarity":
            ax.axhline(result.meta["threshold"], ls="-.", color="#2ca02c", lw=1, label="same-person threshold")
        if key == "success_rate":
            ax.plot([b["mu"] for b in result.rero_bound], [b["bound"] for b in result.rero_bound], ls=":", color="k",
                    marker="^", label="ReRo bound")
            ax.set_ylim(-0.03, 1.03)
        if key == "mse":
            ax.set_yscale("log")
        ax.set_xscale("log", base=2)
        mus = sorted({r["mu"] for r in result.rows})
        ax.set_xticks(mus, [f"{m:g}" for m in mus])
        ax.minorticks_off()
        ax.set_xlabel("μ (= 1/noise multiplier; larger = less private)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"Visual audit of DP-SGD: {result.meta['data']} with prior {result.meta['prior']}, "
                 f"{result.meta['images']} images; success = {result.meta['success_criterion']}", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_panel(result: AuditResult, path: Path, n_rows: int = 6) -> Path:
    """Original | diffusion reconstruction at each μ, columns labelled with μ and ε at δ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mus = list(result.reconstructions)
    eps = {r["mu"]: r.get("eps") for r in result.rows}
    n = min(n_rows, len(result.originals))
    fig, axes = plt.subplots(n, len(mus) + 1, figsize=(1.25 * (len(mus) + 1), 1.3 * n + 0.5), squeeze=False)
    delta = result.meta.get("privacy", "")

    def show(ax: Any, img: torch.Tensor | None) -> None:
        ax.set_xticks([])
        ax.set_yticks([])
        if img is None:
            ax.text(0.5, 0.5, "beyond\nprior's\nrange", ha="center", va="center", fontsize=7)
            return
        ax.imshow(((img.permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1), interpolation="bicubic")

    for i in range(n):
        show(axes[i][0], result.originals[i])
        for j, mu in enumerate(mus):
            rec = result.reconstructions[mu]
            show(axes[i][j + 1], None if rec is None else rec[i])
    axes[0][0].set_title("original", fontsize=8)
    for j, mu in enumerate(mus):
        axes[0][j + 1].set_title(f"μ={mu:g}\n{_eps_text(eps.get(mu))}", fontsize=8)
    import textwrap

    width = max(30, int(14 * (len(mus) + 1)))
    fig.suptitle(textwrap.fill(f"What an adversary with a diffusion prior ({result.meta['prior']}) recovers from one "
                               f"DP-SGD gradient; more privacy (smaller μ, ε) to the left. ε: {delta}", width),
                 fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
