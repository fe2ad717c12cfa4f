"""The report's plots as inline SVG strings: no chart library, no script needed to draw them, so
the page shows the same in any browser with the network off (and prints).

Every mark of one run carries ``class="run" data-run="<run id>"``: the page's small script
highlights a run everywhere when the pointer is on any of its marks or its leaderboard row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 720, 300
PAD_L, PAD_R, PAD_T, PAD_B = 64, 28, 16, 44  # PAD_R: half of a centred "15,000" tick
MAX_POINTS = 400  # per line: more than a 720 px plot can show
# matplotlib's viridis at 0, 1/4, 1/2, 3/4 and 1: readable on white, in order, for the colour
# blind too; darkened at the top end (pure yellow vanishes on white).
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (200, 190, 20))
MISSING = "#9a9a9a"


def colour(t: float | None) -> str:
    """A colour for ``t`` in [0, 1] (None: grey)."""
    if t is None or math.isnan(t):
        return MISSING
    t = min(max(t, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    f = t - i
    a, b = _VIRIDIS[i], _VIRIDIS[i + 1]
    return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(a, b, strict=True))


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2 or 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    count = math.floor((hi - first) / step + 1e-9) + 1
    return [round(first + i * step, 12) for i in range(count)]


def number(v: float) -> str:
    """A tick label: short, without float noise (``0.30000000000000004`` -> ``0.3``)."""
    if v == 0:
        return "0"
    if abs(v) >= 10_000:
        return f"{v:,.0f}" if abs(v) < 1e7 else f"{v:.3g}"
    return f"{v:.4g}"


def _thin(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return list(points)
    stride = len(points) / (MAX_POINTS - 1)
    return [points[int(i * stride)] for i in range(MAX_POINTS - 1)] + [points[-1]]


@dataclass
class Series:
    """One run's line: its points, colour, a label for its tooltip, and whether it ended early
    (drawn with a cross at its last point)."""

    run_id: str
    label: str
    points: list[tuple[float, float]]
    colour: str
    stopped: bool = False


def _frame(kind: str, title: str) -> list[str]:
    return [
        f'<svg class="chart {kind}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    ]


def line_chart(series: Sequence[Series], title: str, x_label: str, y_label: str) -> str:
    """Every run's line on shared axes; empty string when no run has a point."""
    drawn = [s for s in series if s.points]
    if not drawn:
        return ""
    xs = [x for s in drawn for x, _ in s.points]
    ys = [y for s in drawn for _, y in s.points if math.isfinite(y)]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    y_lo = min(y_lo, 0.0) if y_lo >= 0 and y_lo < 0.5 * y_hi else y_lo
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    if x_hi == x_lo:
        x_hi = x_lo + 1
    sx = _scale(x_lo, x_hi, PAD_L, WIDTH - PAD_R)
    sy = _scale(y_lo, y_hi, HEIGHT - PAD_B, PAD_T)
    out = _frame("lines", title)
    out += _axes(ticks(x_lo, x_hi), ticks(y_lo, y_hi), sx, sy, x_label, y_label)
    for s in drawn:
        pts = [(x, y) for x, y in _thin(s.points) if math.isfinite(y)]
        if not pts:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        tip = escape(s.label)
        attrs = f'class="run" data-run="{escape(s.run_id)}"'
        if len(pts) == 1:
            out.append(
                f'<circle {attrs} cx="{sx(pts[0][0]):.1f}" cy="{sy(pts[0][1]):.1f}" r="3" '
                f'fill="{s.colour}"><title>{tip}</title></circle>'
            )
        else:
            out.append(
                f'<polyline {attrs} points="{path}" fill="none" stroke="{s.colour}" '
                f'stroke-width="1.6"><title>{tip}</title></polyline>'
            )
        if s.stopped:
            x, y = sx(pts[-1][0]), sy(pts[-1][1])
            out.append(
                f'<path {attrs} class="run stop" d="M{x - 4:.1f},{y - 4:.1f}l8,8m0,-8l-8,8" '
                f'stroke="{s.colour}" stroke-width="2"><title>{tip}: stopped here</title></path>'
            )
    out.append("</svg>")
    return "".join(out)


def _scale(lo: float, hi: float, a: float, b: float) -> Callable[[float], float]:
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _axes(
    x_ticks: list[float],
    y_ticks: list[float],
    sx: Callable[[float], float],
    sy: Callable[[float], float],
    x_label: str,
    y_label: str,
) -> list[str]:
    bottom, left = HEIGHT - PAD_B, PAD_L
    out = [f'<g class="axis"><line x1="{left}" y1="{bottom}" x2="{WIDTH - PAD_R}" y2="{bottom}"/>']
    out.append(f'<line x1="{left}" y1="{PAD_T}" x2="{left}" y2="{bottom}"/>')
    for t in x_ticks:
        x = sx(t)
        if left - 0.5 <= x <= WIDTH - PAD_R + 0.5:
            out.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}"/>')
            out.append(
                f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{number(t)}</text>'
            )
    for t in y_ticks:
        y = sy(t)
        if PAD_T - 0.5 <= y <= bottom + 0.5:
            out.append(
                f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{WIDTH - PAD_R}" y2="{y:.1f}"/>'
            )
            out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{number(t)}</text>')
    out.append(
        f'<text x="{(left + WIDTH - PAD_R) / 2:.0f}" y="{HEIGHT - 8}" text-anchor="middle" '
        f'class="label">{escape(x_label)}</text>'
    )
    out.append(
        f'<text transform="translate(14,{(PAD_T + bottom) / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle" class="label">{escape(y_label)}</text></g>'
    )
    return out


# --- parallel coordinates ------------------------------------------------------------------------


@dataclass
class Axis:
    """One vertical axis: numeric (linear or log) or categorical (values in first-seen order)."""

    name: str
    values: list[object]  # one per line, None where a run has no value
    log: bool = False

    @property
    def numeric(self) -> bool:
        present = [v for v in self.values if v is not None]
        return bool(present) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in present
        )

    def position(self) -> Callable[[object], float | None]:
        """value -> 0 (bottom) .. 1 (top); None for a missing value."""
        present = [v for v in self.values if v is not None]
        if self.numeric:
            nums = [float(v) for v in present]  # type: ignore[arg-type]
            use_log = self.log and min(nums) > 0
            f = math.log10 if use_log else float
            lo, hi = f(min(nums)), f(max(nums))

            def numeric(v: object) -> float | None:
                if v is None:
                    return None
                return 0.5 if hi == lo else (f(float(v)) - lo) / (hi - lo)  # type: ignore[arg-type]

            return numeric
        order = list(dict.fromkeys(_label(v) for v in present))

        def category(v: object) -> float | None:
            if v is None:
                return None
            return 0.5 if len(order) == 1 else order.index(_label(v)) / (len(order) - 1)

        return category

    def tick_labels(self) -> list[tuple[float, str]]:
        present = [v for v in self.values if v is not None]
        if not present:
            return []
        pos = self.position()
        if self.numeric:
            nums = sorted({float(v) for v in present})  # type: ignore[arg-type]
            # Every value while they are few (grid), else the two ends: labels must not overlap.
            shown = nums if len(nums) <= 4 else [nums[0], nums[-1]]
            return [(pos(v) or 0.0, number(v)) for v in shown]
        firsts = {_label(v): v for v in reversed(present)}  # one value per label, first seen
        return [(pos(firsts[t]) or 0.0, t) for t in dict.fromkeys(map(_label, present))]


def _label(v: object) -> str:
    return str(v).replace(" ", "") if isinstance(v, list) else str(v)


def parallel_coordinates(
    axes: Sequence[Axis], run_ids: Sequence[str], labels: Sequence[str], colours: Sequence[str]
) -> str:
    """One polyline per run through every axis (the last axis is the metric)."""
    if len(axes) < 2 or not run_ids:
        return ""
    top, bottom = PAD_T + 14, HEIGHT - PAD_B
    left, right = PAD_L, WIDTH - PAD_R - 40
    gap = (right - left) / (len(axes) - 1)
    out = _frame("parallel", "parallel coordinates")
    positions = [a.position() for a in axes]
    for i, run_id in enumerate(run_ids):
        points = []
        for j, pos in enumerate(positions):
            p = pos(axes[j].values[i])
            y = bottom + 10 if p is None else bottom - p * (bottom - top)  # missing: below
            points.append(f"{left + j * gap:.1f},{y:.1f}")
        out.append(
            f'<polyline class="run" data-run="{escape(run_id)}" points="{" ".join(points)}" '
            f'fill="none" stroke="{colours[i]}" stroke-width="1.6">'
            f"<title>{escape(labels[i])}</title></polyline>"
        )
    for j, axis in enumerate(axes):
        x = left + j * gap
        out.append(f'<g class="axis"><line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}"/>')
        out.append(
            f'<text x="{x:.1f}" y="{top - 6}" text-anchor="middle" class="label">'
            f"{escape(axis.name)}{' (log)' if axis.log and axis.numeric else ''}</text>"
        )
        for p, text in axis.tick_labels():
            y = bottom - p * (bottom - top)
            out.append(f'<text x="{x + 5:.1f}" y="{y + 4:.1f}" class="tick">{escape(text)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


# --- hyperband ---------------------------------------------------------------------------------


@dataclass
class Bar:
    run_id: str
    label: str
    epochs: int  # epochs whose metric was logged
    planned: int  # epochs the trial was given
    stopped: bool
    colour: str


def epochs_chart(bars: Sequence[Bar], checked: Sequence[int]) -> str:
    """One bar per trial: the epochs it ran, a cross where the sweep stopped it; dashed lines
    after the epochs where the rule was checked."""
    if not bars:
        return ""
    most = max(max(b.planned, b.epochs) for b in bars) or 1
    row = 18
    height = PAD_T + 24 + row * len(bars) + 8
    left, right = 190, WIDTH - PAD_R
    sx = _scale(0, most, left, right)
    out = [
        f'<svg class="chart epochs" viewBox="0 0 {WIDTH} {height}" role="img" '
        'xmlns="http://www.w3.org/2000/svg"><title>epochs per trial</title><g class="axis">'
    ]
    for e in range(most + 1):
        out.append(f'<text x="{sx(e):.1f}" y="{PAD_T + 8}" text-anchor="middle">{e}</text>')
    for e in checked:
        if 0 < e <= most:
            out.append(
                f'<line class="band" x1="{sx(e):.1f}" y1="{PAD_T + 12}" x2="{sx(e):.1f}" '
                f'y2="{height - 4}"/>'
            )
    out.append("</g>")
    for i, b in enumerate(bars):
        y = PAD_T + 24 + i * row
        attrs = f'class="run" data-run="{escape(b.run_id)}"'
        out.append(
            f'<text x="{left - 8}" y="{y + 12}" text-anchor="end" class="run tick" '
            f'data-run="{escape(b.run_id)}">{escape(b.label)}</text>'
        )
        out.append(
            f'<rect x="{left}" y="{y + 3}" width="{sx(b.planned) - left:.1f}" height="{row - 6}" '
            'class="planned"/>'
        )
        out.append(
            f'<rect {attrs} x="{left}" y="{y + 3}" width="{max(sx(b.epochs) - left, 1):.1f}" '
            f'height="{row - 6}" fill="{b.colour}"><title>{escape(b.label)}: {b.epochs} '
            f"epoch(s){', stopped' if b.stopped else ''}</title></rect>"
        )
        if b.stopped:
            x, yc = sx(b.epochs), y + row / 2
            out.append(
                f'<path {attrs} class="run stop" d="M{x + 3:.1f},{yc - 5:.1f}l10,10m0,-10l-10,10" '
                'stroke="#c0392b" stroke-width="2.2"/>'
            )
    out.append("</svg>")
    return "".join(out)
