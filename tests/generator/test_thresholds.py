"""`offsim-generator --threshold`: checked at the end of the run, printed, and the exit status
k6 gives (99) when one fails; a bad one refused before the run starts."""

from __future__ import annotations

import json

from tests.generator.test_dry_run import cli

RUN = ("--seed", "5", "--population", "40", "--duration", str(2 * 86400))
# Slow deliveries and a quick consumption: some demand finds no stock.
SHORTAGE = {"OFFSIM_CONSUME_PER_DAY": "48", "OFFSIM_SUPPLIER_DELAY_MIN": "7200",
            "OFFSIM_SUPPLIER_DELAY_MAX": "7200"}  # fmt: skip


def summary_of(stderr: str) -> dict:
    return json.loads(stderr.strip().splitlines()[-1])


def test_thresholds_that_hold_pass_and_the_run_exits_0():
    done = cli(*RUN, "--threshold", "fill_rate>0.5", "--threshold", "lead_time_p95_s<100000",
               env=SHORTAGE)  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = summary_of(done.stderr)
    assert summary["thresholds"]["passed"] is True
    lines = [line for line in done.stderr.splitlines() if line.startswith("threshold ")]
    fill, lead = summary["kpis"]["fill_rate"], summary["kpis"]["lead_time_p95_s"]
    assert lines == [
        f"threshold passed  fill_rate>0.5  ({fill:.6g})",
        f"threshold passed  lead_time_p95_s<100000  ({lead:.6g})",
    ]


def test_a_failed_threshold_exits_99_after_the_whole_run():
    done = cli(*RUN, "--threshold", "stockout_share<0.0001", "--threshold", "fill_rate>0.5",
               env=SHORTAGE)  # fmt: skip
    assert done.returncode == 99, done.stderr
    summary = summary_of(done.stderr)
    share = summary["kpis"]["stockout_share"]
    assert share > 0.0001
    assert f"threshold FAILED  stockout_share<0.0001  ({share:.6g})" in done.stderr
    assert "threshold passed  fill_rate>0.5" in done.stderr
    # The run went to its end: every event was written.
    assert summary["sim_s"] == 2 * 86400 and summary["events"] == len(done.stdout.splitlines())


def test_a_threshold_on_nothing_measured_fails():
    # No demand at all: no fill rate to judge.
    done = cli(*RUN, "--threshold", "fill_rate>0.5", env={"OFFSIM_CONSUME_PER_DAY": "0"})
    assert done.returncode == 99
    assert "threshold FAILED  fill_rate>0.5  (no data)" in done.stderr


def test_an_unknown_kpi_or_a_bad_expression_is_refused_before_the_run():
    unknown = cli(*RUN, "--threshold", "fill_rate>0.5", "--threshold", "stockouts<0.1")
    assert unknown.returncode == 2
    assert "unknown KPI 'stockouts'" in unknown.stderr and "stockout_share" in unknown.stderr
    assert unknown.stdout == ""  # nothing ran
    bad = cli(*RUN, "--threshold", "fill_rate is high")
    assert bad.returncode == 2
    assert "bad threshold 'fill_rate is high': expected NAME OP NUMBER" in bad.stderr
    assert bad.stdout == ""
