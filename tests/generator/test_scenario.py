"""Scenarios: the built-ins, TOML files, and bad files refused with the phase and field named."""

from __future__ import annotations

import subprocess
import sys

import pytest
from offsim_generator import scenario
from offsim_generator.scenario import HOUR, ScenarioError

GOOD = """
name = "lunch-rush"
repeat = true

[[phases]]
name = "quiet"
duration = "30m"
register_rate = 10
random_order_rate = 5
consumption = 0.5
rhythm = 0

[[phases]]
name = "rush"
duration = 600
register_rate = 100
random_order_rate = 50
consumption = 3
ramp = true

[phases.faults]
malformed = 0.1
"""


def test_parse_good_file_gives_phases_and_rates():
    s = scenario.parse(GOOD, "lunch.toml")
    assert s.name == "lunch-rush" and s.repeat and s.length == 30 * 60 + 600
    quiet, rush = s.phases
    assert quiet.duration == 1800 and rush.faults.malformed == 0.1 and rush.ramp
    assert s.rates(0).register == pytest.approx(10 / HOUR)
    # Half-way through the ramp: half-way between the two phases' rates.
    assert s.rates(1800 + 300).register == pytest.approx(55 / HOUR)
    # Repeats: the second pass starts quiet again.
    assert s.phase_at(2400 + 10) == (0, 10)
    assert not s.ended(10**9)


def test_built_ins_load_with_their_shapes():
    for name in scenario.BUILT_INS:
        s = scenario.load(name, 15, 15)
        assert s.name == name and s.phases
    steady = scenario.load("steady", 15, 15)
    assert steady.rates(12345).register == pytest.approx(15 / HOUR)
    assert steady.length is None and not steady.ended(10**9)
    spike = scenario.load("spike", 15, 15)
    assert spike.rates(55 * 60).register == pytest.approx(10 * spike.rates(0).register)
    ramp = scenario.load("ramp", 15, 15)
    warm, mid, held = (ramp.rates(t).register for t in (0, 3600, 5 * HOUR))
    assert warm < mid < held
    diurnal = scenario.load("diurnal", 15, 15)
    # Night is quieter than dinner time, for arrivals and consumption alike.
    assert diurnal.rates(3 * HOUR).register < diurnal.rates(19 * HOUR).register
    assert diurnal.rates(3 * HOUR).consumption < diurnal.rates(19 * HOUR).consumption


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[phases]\nname = 1", "not valid TOML"),
        ("[[phases]]\nname = 'a'\nregister_rate = 1\nrandom_order_rate = 1\nspeed = 3",
         "phase 1 ('a'): unknown field 'speed'"),
        ("[[phases]]\nname = 'a'\nduration = '1h'\nregister_rate = 1\nrandom_order_rate = 1\n"
         "[[phases]]\nname = 'b'\nregister_rate = -5\nrandom_order_rate = 1",
         "phase 2 ('b'): field 'register_rate': must be from 0"),
        ("[[phases]]\nregister_rate = 1\nrandom_order_rate = 'many'",
         "phase 1: field 'random_order_rate': must be a number"),
        ("[[phases]]\nname = 'x'\nregister_rate = 1\nrandom_order_rate = 1\nrhythm = 2",
         "phase 1 ('x'): field 'rhythm': must be from 0 to 1"),
        ("[[phases]]\nname = 'x'\nduration = 'soon'\nregister_rate = 1\nrandom_order_rate = 1",
         "phase 1 ('x'): field 'duration'"),
        ("[[phases]]\nname = 'x'\nregister_rate = 1\nrandom_order_rate = 1\n"
         "[[phases]]\nname = 'y'\nregister_rate = 1\nrandom_order_rate = 1",
         "phase 1 ('x'): field 'duration': required"),
        ("[[phases]]\nname = 'x'\nregister_rate = 1\n", "phase 1 ('x'): field 'random_order_rate'"),
        ("[[phases]]\nname = 'x'\nregister_rate = 1\nrandom_order_rate = 1\n"
         "[phases.faults]\nreject = 1.5", "phase 1 ('x'): field 'faults.reject'"),
        ("[[phases]]\nname = 'x'\nregister_rate = 1\nrandom_order_rate = 1\n"
         "[phases.faults]\nexplode = 1", "phase 1 ('x'): unknown field 'faults.explode'"),
        ("speed = 1\n[[phases]]\nregister_rate = 1\nrandom_order_rate = 1",
         "unknown field 'speed'"),
        ("name = 'empty'", "needs at least one [[phases]]"),
    ],
)  # fmt: skip
def test_parse_bad_file_names_phase_and_field(text, expected):
    with pytest.raises(ScenarioError) as caught:
        scenario.parse(text, "bad.toml")
    message = str(caught.value)
    assert message.startswith("bad.toml: ")
    assert expected in message


def test_unknown_scenario_name_is_refused():
    with pytest.raises(ScenarioError, match="unknown scenario 'rampage'"):
        scenario.load("rampage", 1, 1)


def test_cli_refuses_bad_file_without_traceback(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[[phases]]\nname = 'surge'\nregister_rate = 'lots'\nrandom_order_rate = 1\n")
    done = subprocess.run(
        [sys.executable, "-m", "offsim_generator", "--dry-run", "--scenario", str(path),
         "--duration", "10"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert "phase 1 ('surge'): field 'register_rate': must be a number" in done.stderr
