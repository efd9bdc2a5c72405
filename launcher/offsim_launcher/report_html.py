"""The run report as one HTML file: tables and SVG charts drawn here, inline, with no script,
font, style sheet or image from elsewhere (a Content-Security-Policy that allows nothing but
inline styles says so to the browser), so the file opens offline and sends no request."""

from __future__ import annotations

from html import escape
from typing import Any

WIDTH, HEIGHT = 860, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 34
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
BANDS = ("#f3f6fa", "#fbf6ee")

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 900px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 3px 10px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; } .muted { color: #666; }
td.text { text-align: left; }
svg { display: block; margin: 6px 0 2px; } .legend span { margin-right: 14px; }
.axis { font-size: 11px; fill: #555; } .phase { font-size: 11px; fill: #333; }
"""

# (title, series names, how values show)
CHARTS = (
    ("Stock-out share (watched product-time at zero)", ("stockout_share",), "share"),
    ("Fill rate (units used over units wanted)", ("fill_rate",), "share"),
    ("Lead time, placed to completed (simulated seconds)",
     ("lead_time_p50_s", "lead_time_p95_s", "lead_time_p99_s"), "s"),
    ("Throughput (orders a simulated hour)", ("placed_per_h", "completed_per_h"), "n"),
)  # fmt: skip


def render(report: dict[str, Any]) -> str:
    settings = report["settings"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "style-src 'unsafe-inline'\">",
        f"<title>offsim run report: {escape(str(settings.get('scenario')))}</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>offsim run report</h1>",
        f"<p class='muted'>{escape(report['source'])}; made {escape(report['generated_at'])}; "
        f"{_hours(report['span_s'])} simulated</p>",
        "<h2>Settings</h2>",
        _table(["setting", "value"], [[k, _plain(v)] for k, v in settings.items()]),
        "<h2>KPIs over the run</h2>",
        _table(
            ["KPI", "value", "what it is"],
            [
                [name, _value(value), report["kpi_descriptions"].get(name, "")]
                for name, value in report["kpis"].items()
            ],
        ),
        "<h2>By phase</h2>",
        _phases_table(report["phases"]),
        "<h2>Over time</h2>",
    ]
    series = report["series"]
    for title, names, unit in CHARTS:
        parts.append(f"<h3>{escape(title)}</h3>")
        parts.append(_chart(series["t_s"], {n: series[n] for n in names}, report["phases"], unit))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _phases_table(phases: list[dict[str, Any]]) -> str:
    headers = [
        "phase", "from", "to", "faults", "stockout share", "fill rate", "lead p95 s",
        "cancelled share", "restocks / SSD-day", "placed", "completed",
    ]  # fmt: skip
    rows = []
    for p in phases:
        k = p["kpis"]
        rows.append([
            p["name"], _hours(p["start_s"]), _hours(p["end_s"]), _faults(p["faults"]),
            _value(k["stockout_share"]), _value(k["fill_rate"]), _value(k["lead_time_p95_s"]),
            _value(k["cancelled_share"]), _value(k["restocks_per_ssd_day"]),
            str(p["orders_placed"]), str(p["orders_completed"]),
        ])  # fmt: skip
    return _table(headers, rows)


def _faults(faults: dict[str, float]) -> str:
    """Only the faults that act: the supplier's delay off 1x, and the shares above 0."""
    acting = []
    if faults.get("supplier_delay", 1.0) != 1.0:
        acting.append(f"supplier {faults['supplier_delay']:g}x slower")
    if faults.get("reject", 0.0) > 0:
        acting.append(f"{faults['reject']:.0%} rejected")
    if faults.get("courier_spike", 0.0) > 0:
        acting.append(f"{faults['courier_spike']:.0%} of deliveries "
                      f"{faults.get('courier_spike_factor', 1.0):g}x slower")  # fmt: skip
    if faults.get("malformed", 0.0) > 0:
        acting.append(f"{faults['malformed']:.0%} malformed")
    return ", ".join(acting) or "none"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """Numbers right-aligned, words (a description, the faults) left."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(str(cell)) for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _chart(
    xs: list[float], lines: dict[str, list[float | None]], phases: list[dict], unit: str
) -> str:
    """A line chart of `lines` over xs (simulated seconds), the phases as bands behind."""
    values = [v for ys in lines.values() for v in ys if v is not None]
    x_max = max(xs, default=0.0) or 1.0
    top = max(values, default=0.0)
    # A share's axis ends at most at 100 %, and shows a small one (say 0.3 %) as more than a
    # line on the floor.
    y_max = min(max(top * 1.2, 0.01), 1.0) if unit == "share" else (top * 1.1 or 1.0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(v: float) -> float:
        return LEFT + plot_w * v / x_max

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / y_max)

    svg = [f"<svg role='img' width='{WIDTH}' height='{HEIGHT}' viewBox='0 0 {WIDTH} {HEIGHT}' "
           "xmlns='http://www.w3.org/2000/svg'>"]  # fmt: skip
    for i, phase in enumerate(phases):
        a, b = x(min(phase["start_s"], x_max)), x(min(phase["end_s"], x_max))
        svg.append(f"<rect x='{a:.1f}' y='{TOP}' width='{max(b - a, 0):.1f}' height='{plot_h}' "
                   f"fill='{BANDS[i % 2]}'/>")  # fmt: skip
        svg.append(f"<text class='phase' x='{a + 4:.1f}' y='{TOP + 12}'>"
                   f"{escape(phase['name'])}</text>")  # fmt: skip
    for tick in range(5):
        v = y_max * tick / 4
        svg.append(f"<line x1='{LEFT}' x2='{WIDTH - RIGHT}' y1='{y(v):.1f}' y2='{y(v):.1f}' "
                   "stroke='#ddd'/>")  # fmt: skip
        svg.append(f"<text class='axis' x='{LEFT - 6}' y='{y(v) + 4:.1f}' "
                   f"text-anchor='end'>{_tick(v, unit)}</text>")  # fmt: skip
        t = x_max * tick / 4
        anchor = "end" if tick == 4 else "middle"  # the last inside the picture
        svg.append(f"<text class='axis' x='{x(t):.1f}' y='{HEIGHT - 12}' "
                   f"text-anchor='{anchor}'>{_hours(t)}</text>")  # fmt: skip
    for colour, (name, ys) in zip(COLOURS, lines.items(), strict=False):
        points = " ".join(
            f"{x(t):.1f},{y(v):.1f}" for t, v in zip(xs, ys, strict=True) if v is not None
        )
        if points:
            svg.append(f"<polyline data-series='{escape(name)}' fill='none' stroke='{colour}' "
                       f"stroke-width='1.8' points='{points}'/>")  # fmt: skip
    svg.append("</svg>")
    legend = "".join(
        f"<span style='color:{colour}'>&#9632; {escape(name)}</span>"
        for colour, name in zip(COLOURS, lines, strict=False)
    )
    return "".join(svg) + f"<div class='legend'>{legend}</div>"


def _cell(text: str) -> str:
    wordy = len(text.split()) > 2
    return f"<td class='text'>{escape(text)}</td>" if wordy else f"<td>{escape(text)}</td>"


def _tick(v: float, unit: str) -> str:
    if unit == "share":
        return f"{v:.1%}" if v < 0.1 else f"{v:.0%}"
    return f"{v:,.0f}" if v >= 10 else f"{v:.2g}"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def _value(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _plain(value: Any) -> str:
    return "-" if value is None else str(value)
