"""Small inline SVG charts for the web view: drawn on the server, so pages need no plotting script and work offline."""

from __future__ import annotations

import math
from html import escape
from typing import Any

# Sequential scale for similarity (light = nothing learned, dark red = as close as the user's own photos).
_STOPS = [(0.0, (247, 247, 247)), (0.25, (253, 219, 199)), (0.5, (244, 165, 130)), (0.75, (214, 96, 77)),
          (1.0, (103, 0, 31))]
SIM_LO, SIM_HI = 0.0, 0.8  # the grid's fixed colour range (cosine similarity), the same for every run


def sim_colour(sim: float | None) -> tuple[str, str]:
    """(background, text colour) for a similarity on the fixed scale; grey when there is none."""
    if sim is None or not math.isfinite(sim):
        return "#e4e6ea", "#555"
    t = min(1.0, max(0.0, (sim - SIM_LO) / (SIM_HI - SIM_LO)))
    for (t0, c0), (t1, c1) in zip(_STOPS, _STOPS[1:]):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            rgb = tuple(round(a + (b - a) * f) for a, b in zip(c0, c1))
            break
    return "#{:02x}{:02x}{:02x}".format(*rgb), ("#fff" if t > 0.62 else "#222")


def scale_stops() -> list[dict[str, Any]]:
    """The legend's gradient: (similarity, colour) pairs."""
    return [{"sim": SIM_LO + t * (SIM_HI - SIM_LO), "colour": sim_colour(SIM_LO + t * (SIM_HI - SIM_LO))[0]}
            for t, _ in _STOPS]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


class _Frame:
    """A chart's plot area: data -> pixel maps, and the gridlines, ticks, labels and frame drawn around it."""

    def __init__(self, width: int, height: int, margins: tuple[int, int, int, int],
                 xr: tuple[float, float], yr: tuple[float, float]) -> None:
        self.width, self.height = width, height
        self.ml, mr, self.mt, mb = margins
        self.pw, self.ph = width - self.ml - mr, height - self.mt - mb
        self.x0, self.x1 = xr
        self.y0, self.y1 = yr

    def sx(self, x: float) -> float:
        return self.ml + (x - self.x0) / (self.x1 - self.x0) * self.pw

    def sy(self, y: float) -> float:
        return self.mt + self.ph - (y - self.y0) / (self.y1 - self.y0) * self.ph

    def axes(self, x_ticks: list[float], x_label: str, y_label: str, aria: str) -> list[str]:
        """The SVG's opening tag, y gridlines with their ticks, x ticks, both axis labels and the frame."""
        ml, mt, pw, ph = self.ml, self.mt, self.pw, self.ph
        out = [f'<svg class="chart" viewBox="0 0 {self.width} {self.height}" width="{self.width}" '
               f'height="{self.height}" role="img" aria-label="{escape(aria)}">']
        for t in _ticks(self.y0, self.y1):
            out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{self.sy(t):.1f}" y2="{self.sy(t):.1f}" class="grid"/>'
                       f'<text x="{ml - 6}" y="{self.sy(t) + 4:.1f}" class="tick" text-anchor="end">{t:g}</text>')
        for t in x_ticks:
            out.append(f'<text x="{self.sx(t):.1f}" y="{mt + ph + 16}" class="tick" text-anchor="middle">{t:g}</text>')
        out.append(f'<text x="{ml + pw / 2}" y="{self.height - 6}" class="axis" text-anchor="middle">'
                   f'{escape(x_label)}</text>')
        out.append(f'<text x="14" y="{mt + ph / 2}" class="axis" text-anchor="middle" '
                   f'transform="rotate(-90 14 {mt + ph / 2})">{escape(y_label)}</text>')
        out.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="frame"/>')
        return out


def line_chart(series: list[dict[str, Any]], *, x_label: str, y_label: str, width: int = 460, height: int = 220,
               y_range: tuple[float, float] | None = None) -> str:
    """An SVG line chart: ``series`` = [{"name", "colour", "points": [(x, y), ...]}]; points with y None are gaps.
    Each point carries a tooltip with its value."""
    pts = [(x, y) for s in series for x, y in s["points"] if y is not None and math.isfinite(y)]
    if not pts:
        return f'<p class="muted">no {escape(y_label)} recorded yet</p>'
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = y_range if y_range else (min(ys), max(ys))
    if y0 == y1:
        y0, y1 = y0 - 0.5, y1 + 0.5
    f = _Frame(width, height, (52, 14, 12, 40), (x0, x1), (y0, y1))
    sx, sy, ml, mt = f.sx, f.sy, f.ml, f.mt
    rounded = sorted({round(x) for x in xs})
    out = f.axes(rounded if len(rounded) <= 12 else _ticks(x0, x1, 8), x_label, y_label, f"{y_label} per {x_label}")
    for s in series:
        seg: list[str] = []
        for x, y in s["points"]:
            if y is None or not math.isfinite(y):
                if len(seg) > 1:
                    out.append(f'<polyline points="{" ".join(seg)}" stroke="{s["colour"]}" class="line"/>')
                seg = []
                continue
            seg.append(f"{sx(x):.1f},{sy(y):.1f}")
        if len(seg) > 1:
            out.append(f'<polyline points="{" ".join(seg)}" stroke="{s["colour"]}" class="line"/>')
        for x, y in s["points"]:
            if y is not None and math.isfinite(y):
                out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{s["colour"]}">'
                           f'<title>{escape(s["name"])}: {escape(x_label)} {x:g}, {y:.3f}</title></circle>')
    if len(series) > 1:
        for i, s in enumerate(series):
            out.append(f'<rect x="{ml + 8 + i * 130}" y="{mt + 6}" width="10" height="10" fill="{s["colour"]}"/>'
                       f'<text x="{ml + 22 + i * 130}" y="{mt + 15}" class="tick">{escape(s["name"])}</text>')
    out.append("</svg>")
    return "".join(out)


def scatter(points: list[dict[str, Any]], *, x_label: str, y_label: str, width: int = 520, height: int = 320,
            x_range: tuple[float, float] | None = None, y_range: tuple[float, float] | None = None,
            ref_x: float | None = None, ref_label: str = "") -> str:
    """An SVG scatter of labelled points (``{"x", "y", "label", "xerr": (lo, hi) | None}``) with optional horizontal
    error bars and a vertical reference line (e.g. chance)."""
    pts = [p for p in points if p.get("x") is not None and p.get("y") is not None]
    if not pts:
        return '<p class="muted">no finished run with both figures to plot</p>'
    xs = [p["x"] for p in pts] + [v for p in pts for v in (p.get("xerr") or [])]
    ys = [p["y"] for p in pts]
    x0, x1 = x_range or (min(xs), max(xs))
    y0, y1 = y_range or (min(ys), max(ys))
    x0, x1 = (x0 - 0.05, x1 + 0.05) if x0 == x1 else (x0, x1)
    y0, y1 = (y0 - 0.05, y1 + 0.05) if y0 == y1 else (y0, y1)
    f = _Frame(width, height, (56, 20, 14, 44), (x0, x1), (y0, y1))
    sx, sy, ml, mt, pw, ph = f.sx, f.sy, f.ml, f.mt, f.pw, f.ph
    out = f.axes(_ticks(x0, x1), x_label, y_label, f"{y_label} against {x_label}")
    if ref_x is not None and x0 <= ref_x <= x1:
        out.append(f'<line x1="{sx(ref_x):.1f}" x2="{sx(ref_x):.1f}" y1="{mt}" y2="{mt + ph}" class="ref"/>'
                   f'<text x="{sx(ref_x) + 4:.1f}" y="{mt + 12}" class="tick">{escape(ref_label)}</text>')
    for i, p in enumerate(pts):
        cx, cy = sx(p["x"]), sy(p["y"])
        if p.get("xerr"):
            lo, hi = p["xerr"]
            out.append(f'<line x1="{sx(lo):.1f}" x2="{sx(hi):.1f}" y1="{cy:.1f}" y2="{cy:.1f}" class="err"/>')
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" class="pt"><title>{escape(str(p["label"]))}: '
                   f'{escape(x_label)} {p["x"]:.3f}, {escape(y_label)} {p["y"]:.3f}</title></circle>'
                   f'<text x="{cx + (-7 if cx > ml + 0.7 * pw else 7):.1f}" y="{max(mt + 12, cy - 6 - (i % 2) * 10):.1f}" '
                   f'class="lbl" '
                   f'text-anchor="{"end" if cx > ml + 0.7 * pw else "start"}">{escape(str(p["label"]))}</text>')
    out.append("</svg>")
    return "".join(out)
