"""Small charts as inline SVG text: a bar chart with a baseline, and a line chart of one or more series.

Pure functions from numbers to markup, so `astro report` pages need no script, no plotting library and no network.
Labels are escaped (series names can come from file names). Not a plotting library: linear axes, five ticks.
"""

from __future__ import annotations

import math
from html import escape

WIDTH, HEIGHT = 440, 250
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 28, 44  # margins around the plot area
COLOURS = ("#1f6fd1", "#e07b00", "#2e9d3a", "#c0392b", "#8e44ad", "#16a5a5")
BASELINE_COLOUR = "#555555"


def value_range(values: list[float], floor: float | None = None) -> tuple[float, float]:
    """(low, high) of the y axis: the data's span, padded by 5%; a flat series gets a span of 1 around its value
    (above it when it sits on the floor, so bars of zero stay on the axis).

    Args:
        values: The finite values to show.
        floor: A lower end to include (0 for accuracies and counts), or None.
    """
    low, high = min(values), max(values)
    if floor is not None:
        low = min(low, floor)
    if high - low < 1e-12:
        return (low, low + 1.0) if floor is not None and low == floor else (low - 0.5, high + 0.5)
    pad = 0.05 * (high - low)
    return (low if floor is not None and low == floor else low - pad), high + pad


def tick_label(value: float) -> str:
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.1e}"
    return f"{value:.3g}"


def _scale(value: float, low: float, high: float, start: float, end: float) -> float:
    return start + (value - low) / (high - low) * (end - start)


def _frame(title: str, x_label: str, y_label: str, y_low: float, y_high: float) -> list[str]:
    """The SVG opening, title, axes, horizontal grid lines with tick labels, and axis labels."""
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-size="13" font-weight="600">{escape(title)}</text>',
    ]
    step = (y_high - y_low) / 4
    digits = max(0, 1 - math.floor(math.log10(step)))  # enough decimals that neighbouring ticks differ
    for i in range(5):
        value = y_low + i * step
        y = _scale(value, y_low, y_high, bottom, TOP)
        label = tick_label(value) if abs(value) >= 1e4 or digits > 4 else f"{value:.{digits}f}"
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        parts.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{label}</text>')
    parts += [
        f'<line x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="#333"/>',
        f'<text x="{(LEFT + right) / 2}" y="{HEIGHT - 6}" text-anchor="middle" font-size="11">{escape(x_label)}</text>',
        f'<text x="12" y="{(TOP + bottom) / 2}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 12 {(TOP + bottom) / 2})">{escape(y_label)}</text>',
    ]
    return parts


def bar_chart_svg(title: str, labels: list[str], values: list[float], y_label: str, baseline: float | None = None,
                  baseline_label: str = "") -> str:
    """Vertical bars, one per label, with an optional dashed horizontal baseline.

    Args:
        title: Chart title.
        labels: Bar labels, left to right.
        values: Bar heights (finite), same length as labels.
        y_label: Y axis label.
        baseline: Height of the dashed reference line, or None for none.
        baseline_label: Its legend text.
    """
    y_low, y_high = value_range(values + ([baseline] if baseline is not None else []), floor=0.0)
    parts = _frame(title, "", y_label, y_low, y_high)
    bottom, slot = HEIGHT - BOTTOM, (WIDTH - RIGHT - LEFT) / max(len(values), 1)
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x, top = LEFT + i * slot + 0.2 * slot, _scale(value, y_low, y_high, bottom, TOP)
        parts.append(f'<rect x="{x:.1f}" y="{top:.1f}" width="{0.6 * slot:.1f}" height="{bottom - top:.1f}" '
                     f'fill="{COLOURS[0]}"><title>{escape(label)}: {tick_label(value)}</title></rect>')
        parts.append(f'<text x="{x + 0.3 * slot:.1f}" y="{top - 3:.1f}" text-anchor="middle" font-size="10">'
                     f"{tick_label(value)}</text>")
        parts.append(f'<text x="{x + 0.3 * slot:.1f}" y="{bottom + 14}" text-anchor="middle" font-size="11">'
                     f"{escape(label)}</text>")
    if baseline is not None:
        y = _scale(baseline, y_low, y_high, bottom, TOP)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="{BASELINE_COLOUR}" '
                     f'stroke-width="1.5" stroke-dasharray="6 4"/>')
        parts.append(f'<text x="{WIDTH - RIGHT - 2}" y="{y - 4:.1f}" text-anchor="end" font-size="10" '
                     f'fill="{BASELINE_COLOUR}">{escape(baseline_label)}</text>')
    return "".join(parts) + "</svg>"


def line_chart_svg(title: str, series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str,
                   x_ticks: dict[float, str] | None = None, floor: float | None = None) -> str:
    """One polyline per series (points sorted by x; non-finite y left out), with a legend.

    Args:
        title: Chart title.
        series: Name -> (x, y) points; at least one finite point overall.
        x_label: X axis label.
        y_label: Y axis label.
        x_ticks: Labels at given x positions (e.g. "8+"), or None for five evenly spaced numeric ticks.
        floor: A lower end the y axis includes (0 for rates), or None.
    """
    clean = {name: sorted((x, y) for x, y in points if math.isfinite(y)) for name, points in series.items()}
    clean = {name: points for name, points in clean.items() if points}
    if not clean:
        raise ValueError(f"chart {title!r}: no finite points")
    xs = [x for points in clean.values() for x, _ in points]
    ys = [y for points in clean.values() for _, y in points]
    y_low, y_high = value_range(ys, floor)
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    parts = _frame(title, x_label, y_label, y_low, y_high)
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    ticks = x_ticks if x_ticks is not None else {x_low + i * (x_high - x_low) / 4: None for i in range(5)}
    if x_ticks is None and all(float(x).is_integer() for x in xs):  # steps: whole-number ticks only
        ticks = {float(round(x)): None for x in ticks}
    for x, label in ticks.items():
        px = _scale(x, x_low, x_high, LEFT, right)
        text = escape(label) if label is not None else tick_label(x)
        parts.append(f'<text x="{px:.1f}" y="{bottom + 14}" text-anchor="middle" font-size="10">{text}</text>')
    for i, (name, points) in enumerate(clean.items()):
        colour = COLOURS[i % len(COLOURS)]
        coords = [(_scale(x, x_low, x_high, LEFT, right), _scale(y, y_low, y_high, bottom, TOP)) for x, y in points]
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in coords)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2">'
                     f"<title>{escape(name)}</title></polyline>")
        if len(points) <= 40:  # markers only where they stay readable
            parts += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"><title>{escape(name)}: '
                      f"{tick_label(x)}, {tick_label(y)}</title></circle>"
                      for (px, py), (x, y) in zip(coords, points, strict=True)]
        if len(clean) > 1:
            ly = TOP + 4 + 14 * i
            parts.append(f'<rect x="{right - 110}" y="{ly}" width="10" height="10" fill="{colour}"/>'
                         f'<text x="{right - 96}" y="{ly + 9}" font-size="10">{escape(name)}</text>')
    return "".join(parts) + "</svg>"
