"""The population model without the services: reproducible dry runs, load that grows with the
population, the daily rhythm, and the open model's bounded in-flight with counted overflow."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from offsim_generator.__main__ import run
from offsim_generator.app import make_model
from offsim_generator.engine import Engine
from offsim_generator.model import Model, synthetic_barcode
from offsim_generator.scenario import load
from offsim_generator.settings import GeneratorSettings


def dry_settings(**changes) -> GeneratorSettings:
    return GeneratorSettings(sim_speed=100_000.0, seed=3, log_level="WARNING", **changes)


async def dry_run(settings: GeneratorSettings, duration: float) -> tuple[list[dict], dict]:
    out = io.StringIO()
    result = await run(settings, asyncio.Event(), duration=duration, dry_run=True, out=out)
    return [json.loads(line) for line in out.getvalue().splitlines()], result.summary()


# A committed dry run: its bytes change only when the model's decisions do (and then on purpose).
EXPECTED = Path(__file__).parent / "expected" / "dry-run-spike-seed7.jsonl"
EXPECTED_ARGS = ("--seed", "7", "--scenario", "spike", "--population", "3", "--duration", "3600")
EXPECTED_ENV = {"OFFSIM_CONSUME_PER_DAY": "120"}


def cli(
    *args: str, speed: str = "200000", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SIM_SPEED": speed, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "offsim_generator", "--dry-run", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_dry_run_same_inputs_give_byte_identical_stdout():
    args = ("--seed", "42", "--scenario", "spike", "--population", "300", "--duration", "3600")
    first, second = cli(*args), cli(*args, speed="50000")
    assert first.returncode == second.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    lines = first.stdout.splitlines()
    summary = json.loads(first.stderr.strip().splitlines()[-1])
    assert summary["events"] == len(lines) == sum(summary["by_kind"].values())
    assert {"max_lag_s", "elapsed_s"} <= set(summary)
    events = [json.loads(line) for line in lines]
    assert all({"t", "event"} <= set(e) for e in events)
    assert Counter(e["event"] for e in events) == summary["by_kind"]
    assert max(e["t"] for e in events[:-1]) < 3600
    assert events[-1] == {"t": 3600.0, "event": "end"}
    # The spike scenario reached its spike phase within the hour.
    assert {"phase": "spike", "t": 3000.0} in [
        {"phase": e["phase"], "t": e["t"]} for e in events if e["event"] == "phase"
    ]
    other = cli("--seed", "43", *args[2:])
    assert other.stdout != first.stdout


def test_dry_run_matches_the_committed_run_whatever_the_device_transport():
    """The same seed gives the same bytes as the committed run, and a dry run never reaches
    for a transport: with MQTT and NATS pointing at nothing, it is the same run."""
    expected = EXPECTED.read_text()
    plain = cli(*EXPECTED_ARGS, env=EXPECTED_ENV)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == expected
    unreachable = {**EXPECTED_ENV, "OFFSIM_DEVICE_TRANSPORT": "mqtt",
                   "MQTT_URL": "mqtt://127.0.0.1:9", "NATS_URL": "nats://127.0.0.1:9"}  # fmt: skip
    elsewhere = cli(*EXPECTED_ARGS, speed="50000", env=unreachable)
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert elsewhere.stdout == expected
    assert {"restock", "delivered", "register", "random_order"} <= {
        json.loads(line)["event"] for line in expected.splitlines()
    }


async def test_dry_run_opens_no_transport(monkeypatch):
    from offsim_generator import app, devices

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run opened a device transport")

    for name in ("NatsReadings", "MqttReadings"):
        monkeypatch.setattr(devices, name, refuse)
        monkeypatch.setattr(app, name, refuse)
    _, summary = await dry_run(dry_settings(population=5, device_transport="mqtt"), 600)
    assert summary["by_kind"]["consume"] > 0


async def test_dry_run_events_carry_synthetic_ids_and_fields():
    events, _ = await dry_run(dry_settings(population=20), 4 * 3600)
    assert events[0] == {"t": 0.0, "event": "population", "users": events[0]["users"], "ssds": 20,
                         "watched": 3, "seed": 3, "scenario": "steady"}  # fmt: skip
    kinds = Counter(e["event"] for e in events)
    assert kinds["register"] > 0 and kinds["random_order"] > 0 and kinds["consume"] > 0
    registered = [e for e in events if e["event"] == "register"]
    # New SSDs are numbered after the starting population's.
    assert registered[0]["ssds"][0] == 21
    consume = next(e for e in events if e["event"] == "consume")
    assert len(consume["barcode"]) == 13 and consume["barcode"].startswith("200")
    assert consume["barcode"] == synthetic_barcode(int(consume["barcode"][3:12]))
    times = [e["t"] for e in events if e["event"] != "delivered"]
    assert times == sorted(times)


async def test_restock_follows_stock_and_delivery_refills_it():
    settings = dry_settings(population=50, consume_per_day=96.0)
    events, _ = await dry_run(settings, 6 * 3600)
    restocks = [e for e in events if e["event"] == "restock"]
    delivered = [e for e in events if e["event"] == "delivered"]
    assert restocks and delivered
    first = restocks[0]
    arrival = next(d for d in delivered
                   if (d["ssd"], d["barcode"]) == (first["ssd"], first["barcode"]))  # fmt: skip
    # Supplier and courier: 2 to 8 simulated minutes by default.
    assert 120 <= arrival["t"] - first["t"] <= 480
    assert arrival["quantity"] == first["quantity"]


def test_consumption_grows_with_the_population():
    def consumes(ssds: int) -> int:
        model = make_model(dry_settings(population=ssds))
        model.populate(ssds)
        return sum(1 for k in range(3600) for e in model.window(k) if e.kind == "consume")

    small, big = consumes(100), consumes(1000)
    # 12 units a product a day, 3 products: 100 SSDs use 150 units an hour.
    assert 100 < small < 200
    assert 8 < big / small < 12


def test_daily_rhythm_shapes_consumption():
    model = Model(load("diurnal", 0, 0), seed=1, watched=3, consume_per_day=12)
    model.populate(2000)
    by_hour = Counter()
    for k in range(86400):
        by_hour[k // 3600] += sum(1 for e in model.window(k) if e.kind == "consume")
    night, breakfast, dinner = by_hour[3], by_hour[8], by_hour[19]
    assert breakfast > 5 * night and dinner > 5 * night
    # Over the day, the rhythm keeps the mean: about 12 units a product.
    assert 0.9 < sum(by_hour.values()) / (2000 * 3 * 12) < 1.1


async def test_open_model_bounds_in_flight_and_counts_overflow():
    model = Model(load("steady", 0, 0), seed=5, watched=3, consume_per_day=86400.0)
    model.populate(10)  # 30 products, each used about once a simulated second
    release = asyncio.Event()
    started = 0

    async def slow(event) -> None:
        nonlocal started
        started += 1
        await release.wait()

    engine = Engine(model, speed=10.0, duration=20, perform=slow, max_in_flight=5)
    engine.start()
    await asyncio.wait_for(engine.done.wait(), 30)
    # The server never answered, yet events kept coming: 5 in flight, the rest overflowed.
    assert started == 5 == len(engine.in_flight)
    assert engine.overflow["consume"] > 100
    release.set()
    await engine.stop()
    assert not engine.in_flight
    assert engine.summary()["overflow"]["consume"] == engine.overflow["consume"]


async def test_pause_holds_the_events_already_drawn_ahead_of_the_clock():
    """The engine draws events a few ticks ahead; a pause must hold those too, and the resume
    send them, none lost."""
    model = Model(load("steady", 0, 0), seed=5, watched=3, consume_per_day=86400.0)
    model.populate(10)  # about 30 events a simulated second, 300 a real second at x10
    sent_at: list[object] = []
    target, reached = 50, asyncio.Event()

    async def record(event) -> None:
        sent_at.append(event)
        if len(sent_at) >= target:
            reached.set()

    engine = Engine(model, speed=10.0, perform=record, max_in_flight=10_000)
    engine.start()
    await asyncio.wait_for(reached.wait(), 10)
    engine.pause()
    launched = engine.events
    await asyncio.sleep(0.5)  # more than the engine draws ahead (LOOKAHEAD_TICKS * TICK_S)
    assert engine.events == launched
    held = len(engine._held)
    assert held > 0
    target = len(sent_at) + held + 10
    reached.clear()
    engine.resume()
    await asyncio.wait_for(reached.wait(), 10)
    await engine.stop()
