"""The KPI definitions on hand-built histories: every figure known in advance."""

from __future__ import annotations

import pytest
from offsim_common import kpis
from offsim_common.kpis import Tally, Threshold, Totals


def test_a_stockout_of_known_length_is_its_share_of_watched_time():
    tally = Tally()
    tally.watch(0.0, products=4, ssds=2)  # 4 products watched for 1,000 s: 4,000 product-s
    tally.stock(100.0, "a", 0)
    tally.stock(300.0, "a", 5)  # 200 s at zero
    tally.stock(500.0, "b", 0)
    tally.stock(500.0, "b", 0)  # still empty: no new stretch
    tally.stock(600.0, "b", 2)  # 100 s
    tally.stock(900.0, "c", 0)  # open at the end: 100 s
    assert tally.at(1000.0).zero_s == pytest.approx(400.0)
    assert tally.at(1000.0).watched_s == pytest.approx(4000.0)
    assert tally.kpis(1000.0)["stockout_share"] == pytest.approx(0.1)
    # A stretch counts only its own part of each stock-out: (200, 550] holds a's last 100 s
    # and b's first 50 s, of 4 x 350 product-s.
    assert tally.between(200.0, 550.0).zero_s == pytest.approx(150.0)
    assert kpis.compute(tally.between(200.0, 550.0))["stockout_share"] == pytest.approx(150 / 1400)


def test_products_watched_from_when_they_join():
    tally = Tally()
    tally.watch(0.0, products=3, ssds=1)
    tally.watch(500.0, products=3, ssds=1)  # a second SSD registers halfway
    totals = tally.at(1000.0)
    assert totals.watched_s == pytest.approx(3 * 1000 + 3 * 500)
    assert totals.ssd_s == pytest.approx(1500.0)
    assert tally.between(400.0, 600.0).watched_s == pytest.approx(3 * 100 + 6 * 100)


def test_fill_rate_is_units_used_over_units_wanted():
    tally = Tally()
    tally.demand(1.0, wanted=3, used=3)
    tally.demand(2.0, wanted=2, used=1)
    tally.demand(3.0, wanted=5, used=0)
    assert tally.kpis(10.0)["fill_rate"] == pytest.approx(4 / 10)
    assert kpis.compute(tally.between(1.5, 10.0))["fill_rate"] == pytest.approx(1 / 7)


def test_lead_times_and_their_stages_are_percentiles_of_completed_orders():
    tally = Tally()
    # Orders completed 100, 200, ..., 1000 s after they were placed, shipped halfway.
    for i in range(1, 11):
        placed = 10_000.0 * i
        tally.completed(placed + 100 * i, placed, placed + 50 * i)
    values = tally.kpis(200_000.0)
    # Interpolated between ranks, as Postgres's percentile_cont: p50 of 100..1000 is 550.
    assert values["lead_time_p50_s"] == pytest.approx(550.0)
    assert values["lead_time_p95_s"] == pytest.approx(955.0)
    assert values["lead_time_p99_s"] == pytest.approx(991.0)
    assert values["lead_time_pending_p50_s"] == pytest.approx(275.0)
    assert values["lead_time_shipped_p50_s"] == pytest.approx(275.0)
    # Only the orders completed in a stretch count in it.
    assert kpis.compute(tally.between(0.0, 30_300.0))["lead_time_p50_s"] == pytest.approx(200.0)


def test_cancelled_share_and_restocks_per_ssd_day():
    tally = Tally()
    tally.watch(0.0, products=6, ssds=2)
    for t in (10.0, 20.0, 30.0):
        tally.completed(t + 5, t, t + 1)
    tally.cancelled(40.0)
    for t in range(8):
        tally.restock(float(t))
    values = tally.kpis(2 * 86400.0)  # 2 SSDs for 2 days: 4 SSD-days
    assert values["cancelled_share"] == pytest.approx(0.25)
    assert values["restocks_per_ssd_day"] == pytest.approx(8 / 4)


def test_nothing_measured_is_none_never_a_made_up_figure():
    values = kpis.compute(Totals())
    assert set(values) == set(kpis.NAMES)
    assert all(value is None for value in values.values())


def test_thresholds_parse_and_check_as_k6_does():
    values = {**kpis.compute(Totals()), "stockout_share": 0.015, "lead_time_p95_s": 30000.0}
    assert Threshold.parse("stockout_share<0.02").check(values) == (True, 0.015)
    assert Threshold.parse(" lead_time_p95_s <= 21600 ").check(values) == (False, 30000.0)
    assert Threshold.parse("stockout_share>=0.015").check(values)[0]
    # A KPI with nothing measured fails: an empty run does not pass a gate.
    assert Threshold.parse("fill_rate>0.9").check(values) == (False, None)
    ok, lines = kpis.check_thresholds(
        kpis.parse_thresholds(["stockout_share<0.02", "fill_rate>0.9"]), values
    )
    assert not ok
    assert lines == ["passed  stockout_share<0.02  (0.015)", "FAILED  fill_rate>0.9  (no data)"]


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ("stockout<0.02", "unknown KPI 'stockout'"),
        ("stockout_share=<0.02", "expected NAME OP NUMBER"),
        ("stockout_share<", "expected NAME OP NUMBER"),
        ("stockout_share<two", "'two' is not a number"),
        ("stockout_share<nan", "not a finite number"),
    ],
)
def test_a_bad_threshold_is_refused_naming_what_is_wrong(expression, names):
    with pytest.raises(ValueError, match=names.replace("(", r"\(")):
        Threshold.parse(expression)
