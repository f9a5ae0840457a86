"""The pool page's chart, drawn on the server as inline SVG: the pool's size (and the size each
evaluation asked for) over the last hours, then one panel per policy input with its rules'
thresholds, every scale-out and scale-in marked across all panels.

Pure: points in, markup out (no store, no clock). Series are reduced to at most two points (the
lowest and the highest, in time order) per `BUCKET_PX` pixels, so a spike survives and a pool with
thousands of evaluations draws in a few kilobytes. Styling is by class (console.css), so the page
needs no inline style under its Content-Security-Policy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import NamedTuple

WIDTH = 960
LEFT = 56               # room for the y labels
RIGHT = 12
SIZE_HEIGHT = 150
INPUT_HEIGHT = 120
TOP = 18                # room for the panel's title
BOTTOM = 20             # room for the time labels
BUCKET_PX = 2
TICK_STEPS = (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


class Point(NamedTuple):
    at: float
    value: float | None


@dataclass(frozen=True)
class Mark:
    """A decision that acted (or would have, in dry-run): a vertical line on every panel."""

    at: float
    outcome: str            # scale_out | scale_in
    text: str               # the tooltip: what and why
    dry_run: bool = False


@dataclass(frozen=True)
class Threshold:
    """A line on an input's panel: a threshold rule's value, or a target rule's target."""

    value: float
    label: str              # "busy > 20 → +1"
    direction: int          # +1 the rule grows the pool, -1 shrinks it, 0 target/exact
    band: tuple[float, float] | None = None     # a target rule's tolerance band


@dataclass
class Panel:
    title: str
    points: list[Point]
    thresholds: list[Threshold] = field(default_factory=list)
    steps: bool = False         # a step line (sizes), not a slope
    extra: list[tuple[str, list[Point]]] = field(default_factory=list)    # (css class, points), drawn under
    bounds: tuple[int | None, int | None] = (None, None)                 # min/max lines (size panel)
    integer: bool = False


def reduce(points: Sequence[Point], start: float, end: float, width: float) -> list[Point]:
    """At most two points (the lowest and the highest, in time order) per BUCKET_PX of `width`, plus
    every gap (a None): what a polyline of that width can show anyway."""
    if end <= start:
        return list(points)
    buckets = max(1, int(width / BUCKET_PX))
    scale = buckets / (end - start)
    out: list[Point] = []
    cur: int | None = None
    lo: Point | None = None
    hi: Point | None = None

    def flush() -> None:
        if lo is not None and hi is not None:
            out.extend(sorted({lo, hi}, key=lambda p: p.at) if lo is not hi else [lo])

    for p in points:
        b = int((p.at - start) * scale)
        if p.value is None:
            flush()
            lo = hi = None
            cur = None
            if not out or out[-1].value is not None:
                out.append(p)
            continue
        if b != cur:
            flush()
            cur, lo, hi = b, p, p
            continue
        assert lo is not None and hi is not None and lo.value is not None and hi.value is not None
        if p.value < lo.value:
            lo = p
        if p.value > hi.value:
            hi = p
    flush()
    return out


def changes(points: Iterable[Point]) -> list[Point]:
    """A step series with only the points where the value changes (and the last one)."""
    out: list[Point] = []
    last: Point | None = None
    for p in points:
        if not out or p.value != out[-1].value:
            out.append(p)
        last = p
    if last is not None and out[-1] is not last:
        out.append(last)
    return out


def _ticks(start: float, end: float, max_ticks: int = 8) -> list[float]:
    span = end - start
    step = next((s for s in TICK_STEPS if span / s <= max_ticks), TICK_STEPS[-1])
    first = math.ceil(start / step) * step
    return [t for t in _frange(first, end, step)]


def _frange(a: float, b: float, step: float) -> Iterable[float]:
    t = a
    while t <= b:
        yield t
        t += step


def _nice_range(values: Sequence[float], integer: bool) -> tuple[float, float]:
    lo = min([0.0, *values])
    hi = max([1.0 if integer else 0.0, *values])
    if hi == lo:
        hi = lo + 1
    pad = (hi - lo) * 0.08
    return lo, (math.ceil(hi + pad) if integer else hi + pad)


def _fmt(v: float) -> str:
    if v == int(v) and abs(v) < 1e9:
        return str(int(v))
    return f"{v:.3g}"


def _clock(t: float, span: float) -> str:
    d = datetime.fromtimestamp(t, UTC)
    return d.strftime("%H:%M") if span <= 86400 else d.strftime("%m-%d %H:%M")


def _path(points: Sequence[Point], x: _Scale, y: _Scale, steps: bool) -> str:
    parts: list[str] = []
    pen_up = True
    prev_y: float | None = None
    for p in points:
        if p.value is None:
            pen_up = True
            continue
        px, py = x(p.at), y(p.value)
        if pen_up:
            parts.append(f"M{px:.1f},{py:.1f}")
        elif steps and prev_y is not None:
            parts.append(f"H{px:.1f}V{py:.1f}")
        else:
            parts.append(f"L{px:.1f},{py:.1f}")
        pen_up = False
        prev_y = py
    return "".join(parts)


class _Scale:
    def __init__(self, d0: float, d1: float, r0: float, r1: float) -> None:
        self.d0, self.r0 = d0, r0
        self.k = (r1 - r0) / (d1 - d0) if d1 != d0 else 0.0

    def __call__(self, v: float) -> float:
        return self.r0 + (v - self.d0) * self.k


def render(panels: Sequence[Panel], marks: Sequence[Mark], start: float, end: float) -> str:
    """One <svg> with the panels stacked, sharing the time axis [start, end]."""
    heights = [SIZE_HEIGHT if i == 0 else INPUT_HEIGHT for i in range(len(panels))]
    total = sum(heights)
    x = _Scale(start, end, LEFT, WIDTH - RIGHT)
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {total}" '
           f'width="{WIDTH}" height="{total}" role="img" aria-label="size and inputs over time">']
    ticks = _ticks(start, end)
    top = 0
    for panel, h in zip(panels, heights, strict=True):
        out.append(_panel(panel, marks, ticks, x, top, h, start, end))
        top += h
    out.append("</svg>")
    return "".join(out)


def _panel(panel: Panel, marks: Sequence[Mark], ticks: Sequence[float], x: _Scale, top: int, h: int,
           start: float, end: float) -> str:
    y0, y1 = top + h - BOTTOM, top + TOP
    shown = [p for p in panel.points if p.value is not None and start <= p.at <= end]
    values = [p.value for p in shown if p.value is not None]
    values += [t.value for t in panel.thresholds]
    values += [v for t in panel.thresholds if t.band for v in t.band]
    values += [p.value for _, ps in panel.extra for p in ps if p.value is not None]
    values += [b for b in panel.bounds if b is not None]
    lo, hi = _nice_range(values, panel.integer)
    y = _Scale(lo, hi, y0, y1)
    o: list[str] = [f'<g class="panel" data-panel="{escape(panel.title)}">',
                    f'<text class="title" x="{LEFT}" y="{top + 12}">{escape(panel.title)}</text>',
                    f'<rect class="frame" x="{LEFT}" y="{y1}" width="{WIDTH - RIGHT - LEFT}" height="{y0 - y1}"/>']
    for t in ticks:
        px = x(t)
        o.append(f'<line class="grid" x1="{px:.1f}" x2="{px:.1f}" y1="{y1}" y2="{y0}"/>'
                 f'<text class="tick" x="{px:.1f}" y="{y0 + 13}" text-anchor="middle">{_clock(t, end - start)}</text>')
    for v in (lo, (lo + hi) / 2, hi):
        if panel.integer and v != int(v):
            continue
        o.append(f'<text class="tick" x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
    for name, b in zip(("min", "max"), panel.bounds, strict=True):
        if b is not None:
            o.append(f'<line class="bound" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(b):.1f}" y2="{y(b):.1f}"/>'
                     f'<text class="bound-label" x="{WIDTH - RIGHT - 4}" y="{y(b) - 3:.1f}" '
                     f'text-anchor="end">{name} {b}</text>')
    for th in panel.thresholds:
        kind = "grow" if th.direction > 0 else "shrink" if th.direction < 0 else "target"
        if th.band:
            top_y, bottom_y = y(th.band[1]), y(th.band[0])
            o.append(f'<rect class="band" x="{LEFT}" y="{top_y:.1f}" width="{WIDTH - RIGHT - LEFT}" '
                     f'height="{bottom_y - top_y:.1f}"/>')
        ty = y(th.value)
        label_y = ty - 3 if ty - 3 >= y1 + 11 else ty + 11      # below the line when it is near the top
        o.append(f'<line class="threshold {kind}" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}">'
                 f'<title>{escape(th.label)}</title></line>'
                 f'<text class="threshold-label {kind}" x="{LEFT + 4}" y="{label_y:.1f}">{escape(th.label)}</text>')
    for m in marks:
        if start <= m.at <= end:
            px = x(m.at)
            cls = "out" if m.outcome == "scale_out" else "in"
            o.append(f'<line class="mark {cls}{" dry" if m.dry_run else ""}" x1="{px:.1f}" x2="{px:.1f}" '
                     f'y1="{y1}" y2="{y0}"><title>{escape(m.text)}</title></line>')
    for cls, pts in panel.extra:
        o.append(f'<path class="series {cls}" d="{_path(pts, x, y, panel.steps)}"/>')
    o.append(f'<path class="series value" d="{_path(panel.points, x, y, panel.steps)}"/>')
    if not shown:
        o.append(f'<text class="nodata" x="{(LEFT + WIDTH - RIGHT) / 2}" y="{(y0 + y1) / 2:.1f}" '
                 f'text-anchor="middle">no data in this window</text>')
    if panel.steps:
        # Triangles above the size line: ▲ scale-out, ▼ scale-in (also hoverable).
        for m in marks:
            if start <= m.at <= end:
                px = x(m.at)
                tri = (f"{px - 5:.1f},{y1 + 9} {px + 5:.1f},{y1 + 9} {px:.1f},{y1 + 1}" if m.outcome == "scale_out"
                       else f"{px - 5:.1f},{y1 + 1} {px + 5:.1f},{y1 + 1} {px:.1f},{y1 + 9}")
                cls = "out" if m.outcome == "scale_out" else "in"
                o.append(f'<polygon class="marker {cls}" points="{tri}"><title>{escape(m.text)}</title></polygon>')
    o.append("</g>")
    return "".join(o)


__all__ = ["Mark", "Panel", "Point", "Threshold", "changes", "reduce", "render"]
