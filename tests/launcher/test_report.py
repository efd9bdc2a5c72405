"""`offsim report` of a dry run's events and `offsim compare`: the report's KPIs are the dry
run's own (one definition), each phase carries its faults and its figures, the HTML renders in
headless Chromium with its charts and sends no request, and bad input is refused by name."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dashboard.test_browser import CHROMIUM, CHROMIUM_ARGS, HAVE_CHROMIUM
from tests.generator.test_dry_run import cli

# A day of a small city, then a supplier three times slower that rejects a fifth of the orders,
# while a fifth of the generator's requests are sent malformed (registrations refused, so their
# SSDs watch nothing).
SCENARIO = """
name = "slow-supplier"

[[phases]]
name = "baseline"
duration = "1d"
register_rate = 1
random_order_rate = 2
rhythm = 0

[[phases]]
name = "slow"
duration = "1d"
register_rate = 1
random_order_rate = 2
rhythm = 0

[phases.faults]
supplier_delay = 3
reject = 0.2
malformed = 0.2
"""
ENV = {"OFFSIM_CONSUME_PER_DAY": "24", "OFFSIM_SUPPLIER_DELAY_MIN": "3600",
       "OFFSIM_SUPPLIER_DELAY_MAX": "7200"}  # fmt: skip


def offsim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "offsim_launcher", *args],
        capture_output=True, text=True, timeout=120, env=os.environ,
    )  # fmt: skip


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[Path, dict]:
    """The events of a dry run of SCENARIO, and its summary."""
    folder = tmp_path_factory.mktemp("report")
    scenario = folder / "slow.toml"
    scenario.write_text(SCENARIO)
    done = cli("--seed", "3", "--scenario", str(scenario), "--population", "150", env=ENV)
    assert done.returncode == 0, done.stderr
    events = folder / "events.jsonl"
    events.write_text(done.stdout)
    return events, json.loads(done.stderr.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def report(dry_run, tmp_path_factory) -> tuple[Path, dict]:
    events, _ = dry_run
    out = tmp_path_factory.mktemp("out") / "report.html"
    done = offsim("report", "--events", str(events), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"report: {out} and {out.with_suffix('.json')}" in done.stdout
    return out, json.loads(out.with_suffix(".json").read_text())


def test_the_report_kpis_are_the_dry_runs_own(dry_run, report):
    _, summary = dry_run
    _, made = report
    # The same figures, from the lines' times (written to the millisecond), to the run's end.
    assert set(made["kpis"]) == set(summary["kpis"])
    for name, value in summary["kpis"].items():
        assert made["kpis"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    settings = {"speed": None, "population": 150, "seed": 3, "scenario": "slow-supplier",
                "watched": 3}  # fmt: skip
    assert settings.items() <= made["settings"].items()
    assert made["span_s"] == 2 * 86400


def test_each_phase_has_its_faults_and_what_they_did(report):
    _, made = report
    baseline, slow = made["phases"]
    assert (baseline["name"], slow["name"]) == ("baseline", "slow")
    assert (baseline["start_s"], slow["start_s"]) == (0.0, 86400.0)
    assert baseline["faults"]["supplier_delay"] == 1.0 and baseline["faults"]["reject"] == 0.0
    assert slow["faults"]["supplier_delay"] == 3.0 and slow["faults"]["reject"] == 0.2
    # The dry run plays the faults: a fifth of the slow day's orders are cancelled, none of
    # the baseline's, and the pending stage takes three times as long.
    assert baseline["kpis"]["cancelled_share"] == 0.0
    assert 0.12 < slow["kpis"]["cancelled_share"] < 0.28
    ratio = slow["kpis"]["lead_time_pending_p50_s"] / baseline["kpis"]["lead_time_pending_p50_s"]
    assert 2.5 < ratio < 3.5
    assert slow["kpis"]["stockout_share"] > baseline["kpis"]["stockout_share"]
    assert sum(p["orders_placed"] for p in made["phases"]) > 0
    # The charts' series cover the run, a point per sixtieth.
    series = made["series"]
    assert len(series["t_s"]) == 60 and series["t_s"][-1] == made["span_s"]
    assert all(len(values) == 60 for values in series.values())


@pytest.mark.skipif(not HAVE_CHROMIUM, reason=f"Chromium not found at {CHROMIUM}")
def test_the_html_renders_its_charts_in_chromium_and_requests_nothing(report, tmp_path):
    playwright_api = pytest.importorskip("playwright.async_api")
    out, made = report

    async def look() -> tuple[list[str], dict, list[str]]:
        requests: list[str] = []
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 960, "height": 900})
            page.on("request", lambda request: requests.append(request.url))
            await page.goto(out.as_uri())
            charts = await page.evaluate(
                """() => [...document.querySelectorAll('svg')].map(svg => ({
                       lines: [...svg.querySelectorAll('polyline')].map(
                           line => [line.dataset.series, line.points.numberOfItems]),
                       width: svg.getBoundingClientRect().width}))"""
            )
            cells = await page.evaluate(
                "() => [...document.querySelectorAll('table')[1].querySelectorAll('tr')]"
                ".map(row => row.innerText)"
            )
            await page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            await browser.close()
        return requests, charts, cells

    requests, charts, cells = asyncio.run(look())
    # The file itself, and nothing else: no CDN, no font, no image.
    assert requests == [out.as_uri()]
    assert [[name for name, _ in chart["lines"]] for chart in charts] == [
        ["stockout_share"], ["fill_rate"],
        ["lead_time_p50_s", "lead_time_p95_s", "lead_time_p99_s"],
        ["placed_per_h", "completed_per_h"],
    ]  # fmt: skip
    assert all(chart["width"] > 800 for chart in charts)
    assert all(points > 30 for chart in charts for _, points in chart["lines"])
    shown = {row.split("\t")[0]: row.split("\t")[1] for row in cells[1:]}
    assert shown["fill_rate"] == f"{made['kpis']['fill_rate']:.4g}"
    assert shown["lead_time_p95_s"] == f"{made['kpis']['lead_time_p95_s']:,.0f}"
    if shot := os.environ.get("OFFSIM_REPORT_SCREENSHOT"):
        Path(shot).write_bytes((tmp_path / "report.png").read_bytes())


def test_compare_sets_two_reports_side_by_side(report, tmp_path):
    out, made = report
    other = json.loads(json.dumps(made))
    other["kpis"]["fill_rate"] = made["kpis"]["fill_rate"] / 2
    other["kpis"]["stockout_share"] = None
    b = tmp_path / "b.json"
    b.write_text(json.dumps(other))
    done = offsim("compare", str(out.with_suffix(".json")), str(b))
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[4:]}
    fill = made["kpis"]["fill_rate"]
    assert rows["fill_rate"] == [f"{fill:.6g}", f"{fill / 2:.6g}", f"{-fill / 2:+.6g}", "-50.00%"]
    assert rows["stockout_share"][1:] == ["-", "-", "-"]
    assert rows["lead_time_p95_s"][2:] == ["+0", "+0.00%"]
    assert "faults malformed=0.2 reject=0.2 supplier_delay=3" in done.stdout


def test_bad_input_is_refused_by_name(tmp_path):
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"t": 0, "event": "population"}\nnot json\n')
    done = offsim("report", "--events", str(junk), "--out", str(tmp_path / "r.html"))
    assert done.returncode == 1
    assert f"offsim: {junk}, line 1: not a dry run's event" in done.stderr
    assert not (tmp_path / "r.html").exists()
    missing = offsim("report", "--events", str(tmp_path / "none.jsonl"))
    assert missing.returncode == 1 and "none.jsonl" in missing.stderr
    notreport = tmp_path / "a.json"
    notreport.write_text('{"hello": 1}')
    done = offsim("compare", str(notreport), str(notreport))
    assert done.returncode == 1
    assert f"offsim: {notreport}: not a run report" in done.stderr
