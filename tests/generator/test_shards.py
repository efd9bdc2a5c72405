"""Sharded generators (OFFSIM_SHARD, --shard I/N): N generators play one city together. Their
dry runs add up to the whole city's, they never share a household, SSD or address, a bad shard
is refused before anything runs, and only shard 0 publishes the faults."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from itertools import combinations

import aiohttp
import pytest
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from offsim_common import faults, subjects
from offsim_common.settings import ConfigError
from offsim_generator import control
from offsim_generator.__main__ import amain, parse_args, run, settings_from
from offsim_generator.engine import Engine
from offsim_generator.model import Model
from offsim_generator.scenario import load
from offsim_generator.settings import GeneratorSettings
from offsim_generator.shard import Shard
from offsim_launcher.embedded import free_port
from prometheus_client import REGISTRY

from tests.conftest import changed, eventually
from tests.generator.test_dry_run import cli, dry_run, dry_settings

# Lines about the run rather than a household: every shard writes the phases and the `end`,
# and its `population` line counts its own share of the starting population.
RUN_WIDE = {"population", "phase", "end"}

# Quiet, then a ramp into a rush with malformed requests, then the daily rhythm: every kind of
# event, and every keyed draw (malformed ones included).
SCENARIO = """
[[phases]]
name = "calm"
duration = "30m"
register_rate = 20
random_order_rate = 20
rhythm = 0

[[phases]]
name = "rush"
duration = "1h"
register_rate = 150
random_order_rate = 90
consumption = 3
ramp = true
faults = { malformed = 0.15 }

[[phases]]
name = "evening"
register_rate = 30
random_order_rate = 20
"""


def household_lines(events: list[dict]) -> Counter[str]:
    return Counter(json.dumps(e, sort_keys=True) for e in events if e["event"] not in RUN_WIDE)


async def city(tmp_path, count: int, **changes) -> tuple[list[dict], list[list[dict]]]:
    """The whole city's dry run and its `count` shards' (same seed, population, scenario and
    duration)."""
    scenario = tmp_path / "rush.toml"
    scenario.write_text(SCENARIO)
    settings = dry_settings(scenario=str(scenario), consume_per_day=120.0, **changes)
    whole, _ = await dry_run(settings, 3 * 3600)
    shards = [
        (await dry_run(settings.model_copy(update={"shard": Shard(i, count)}), 3 * 3600))[0]
        for i in range(count)
    ]
    return whole, shards


@pytest.mark.parametrize("count", [2, 3, 5])
async def test_the_shards_dry_runs_add_up_to_the_whole_citys(tmp_path, count):
    """The union of the shards' lines is the whole run's, as multisets (each shard's lines are
    in time order, the union interleaves them). The run-wide lines are compared on their own:
    every shard writes the same `phase` lines as the whole run, and the shards' `population`
    lines, each naming its shard, add up to the whole's."""
    whole, shards = await city(tmp_path, count, population=40)
    lines = household_lines(whole)
    kinds = Counter(json.loads(line)["event"] for line in lines.elements())
    assert {"consume", "register", "random_order", "restock", "delivered"} <= set(kinds)
    assert any('"malformed": true' in line for line in lines)

    assert sum((household_lines(shard) for shard in shards), Counter()) == lines
    phases = [e for e in whole if e["event"] == "phase"]
    assert len(phases) == 3
    for shard in shards:
        assert [e for e in shard if e["event"] == "phase"] == phases
        assert shard[-1] == whole[-1] == {"t": 3 * 3600.0, "event": "end"}
    populations = [shard[0] for shard in shards]
    assert [p["shard"] for p in populations] == [f"{i}/{count}" for i in range(count)]
    for field in ("users", "ssds"):
        assert sum(p[field] for p in populations) == whole[0][field]
    assert "shard" not in whole[0]


async def test_shards_share_no_household_ssd_or_address_and_split_the_load(tmp_path):
    count = 3
    whole, shards = await city(tmp_path, count, population=300)

    def played(events: list[dict]) -> tuple[set[int], set[int], set[str]]:
        users = {e["user"] for e in events if e["event"] == "register"}
        ssds = {e["ssd"] for e in events if "ssd" in e}
        ssds |= {s for e in events if e["event"] == "register" for s in e["ssds"]}
        emails = {e["email"] for e in events if e["event"] == "register"}
        return users, ssds, emails

    shares = [played(shard) for shard in shards]
    for a, b in combinations(shares, 2):
        for mine, theirs in zip(a, b, strict=True):
            assert mine.isdisjoint(theirs)
    # Shard I registers the households numbered I modulo N (a dry run's users count from 1).
    for index, (users, _, _) in enumerate(shares):
        assert users and all((user - 1) % count == index for user in users)
    everyone = played(whole)
    for part in range(3):
        assert set().union(*(share[part] for share in shares)) == everyone[part]

    # Each plays about a third of the city's consumption.
    consumed = [sum(1 for e in shard if e["event"] == "consume") for shard in shards]
    total = sum(1 for e in whole if e["event"] == "consume")
    assert sum(consumed) == total > 1000
    assert all(0.25 < share / total < 0.42 for share in consumed), consumed


def test_the_starting_population_is_split_by_household_number():
    count, ssds = 4, 101
    owners: dict[int, int] = {}
    for index in range(count):
        model = Model(load("steady", 60, 60), seed=9, watched=3, consume_per_day=12,
                      shard=Shard(index, count))  # fmt: skip
        users = model.populate(ssds)
        assert model.population.ssds == ssds  # every shard numbers the whole city alike
        assert all(user % count == index for user, _ in users)
        assert model.population.own_ssds == sum(len(s) for _, s in users) > 0
        for _, indices in users:
            for ssd in indices:
                assert ssd not in owners
                owners[ssd] = index
        # Its events are its own SSDs'.
        events = [e for k in range(3600) for e in model.window(k) if e.ssd >= 0]
        assert events and all(owners.get(e.ssd) == index for e in events if e.ssd < ssds)
    assert sorted(owners) == list(range(ssds))


# --- what a shard is: I/N, 0-based, or auto/N ------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("3/3", "I must be below N"),
        ("5/2", "I must be below N"),
        ("1/0", "N must be at least 1"),
        ("auto/0", "N must be at least 1"),
        ("one/3", "must be I/N"),
        ("-1/3", "must be I/N"),
        ("1/3/4", "must be I/N"),
        ("3", "must be I/N"),
    ],
)
async def test_a_bad_shard_is_refused_before_the_run_starts(value, problem, monkeypatch, capsys):
    monkeypatch.delenv("OFFSIM_SHARD", raising=False)
    with pytest.raises(SystemExit) as exit_:
        await amain(["--dry-run", f"--shard={value}"])
    assert exit_.value.code == 2
    err = capsys.readouterr()
    assert "argument --shard" in err.err and problem in err.err and repr(value) in err.err
    assert err.out == ""

    monkeypatch.setenv("OFFSIM_SHARD", value)
    assert await amain(["--dry-run"]) == 2
    err = capsys.readouterr()
    assert err.err.startswith("offsim-generator: OFFSIM_SHARD: ") and problem in err.err
    assert err.out == ""


def test_a_bad_shard_exits_non_zero_from_the_command_line():
    done = cli("--duration", "60", env={"OFFSIM_SHARD": "3/3"})
    assert done.returncode == 2 and done.stdout == ""
    assert "OFFSIM_SHARD" in done.stderr and "I must be below N" in done.stderr


def test_the_flag_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("OFFSIM_SHARD", "0/3")
    assert settings_from(parse_args([])).shard == Shard(0, 3)
    assert settings_from(parse_args(["--shard", "2/3"])).shard == Shard(2, 3)
    monkeypatch.delenv("OFFSIM_SHARD")
    assert settings_from(parse_args([])).shard == Shard(0, 1)


async def test_the_command_line_shard_plays_the_same_share():
    """`--shard` through the console script (and over an OFFSIM_SHARD that says otherwise) is
    the same dry run as the shard's settings in the process."""
    args = ("--seed", "7", "--scenario", "spike", "--population", "30", "--duration", "3600")
    done = cli(*args, "--shard", "1/3", env={"OFFSIM_SHARD": "0/3"})
    assert done.returncode == 0, done.stderr
    settings = GeneratorSettings(seed=7, scenario="spike", population=30, sim_speed=100_000.0,
                                 log_level="WARNING", shard=Shard(1, 3))  # fmt: skip
    events, summary = await dry_run(settings, 3600)
    assert [json.loads(line) for line in done.stdout.splitlines()] == events
    assert summary["shard"] == json.loads(done.stderr.splitlines()[-1])["shard"] == "1/3"


def test_auto_takes_the_shard_from_the_pod_ordinal(monkeypatch):
    monkeypatch.setenv("HOSTNAME", "generator-2")
    assert Shard.parse("auto/3") == Shard(2, 3)
    assert GeneratorSettings.from_env({"OFFSIM_SHARD": "auto/3"}).shard == Shard(2, 3)
    assert Shard.parse("auto/3", "offsim-generator-0") == Shard(0, 3)
    with pytest.raises(ConfigError, match=r"OFFSIM_SHARD: auto/N: the host 'generator-2' is "
                                          r"ordinal 2, not below N=2"):  # fmt: skip
        GeneratorSettings.from_env({"OFFSIM_SHARD": "auto/2"})
    monkeypatch.setenv("HOSTNAME", "generator")
    with pytest.raises(ConfigError, match="OFFSIM_SHARD: auto/N takes I from the host name"):
        GeneratorSettings.from_env({"OFFSIM_SHARD": "auto/3"})


# --- which shard it is, and the faults -------------------------------------------------------


async def test_the_control_state_and_the_metrics_name_the_shard():
    model = Model(load("steady", 0, 0), seed=1, watched=3, consume_per_day=12,
                  shard=Shard(1, 3))  # fmt: skip
    model.populate(30)
    engine = Engine(model, speed=1.0, perform=lambda event: None)
    state = control.state(engine)
    assert state["shard"] == "1/3"
    assert state["ssds"] == model.population.own_ssds < 30

    _, summary = await dry_run(dry_settings(population=10, shard=Shard(2, 3)), 60)
    assert summary["shard"] == "2/3"
    assert REGISTRY.get_sample_value("offsim_generator_shard_info", {"shard": "2/3"}) == 1.0


@asynccontextmanager
async def generator(settings) -> AsyncIterator[str]:
    """A generator against NATS for the length of the block: its control URL."""
    port = free_port()
    stop = asyncio.Event()
    running = asyncio.create_task(run(settings, stop, probe_port=port))
    url = f"http://127.0.0.1:{port}/api/control"
    try:
        await eventually(lambda: call("GET", url), within=30)
        yield url
    finally:
        stop.set()
        await running


async def call(method: str, url: str, body: dict | None = None) -> tuple[int, dict] | None:
    try:
        async with aiohttp.ClientSession() as http:
            async with http.request(method, url, json=body) as resp:
                return resp.status, await resp.json()
    except aiohttp.ClientConnectionError:
        return None  # not listening yet


async def published(js) -> tuple[int, faults.Faults] | None:
    """The faults document in NATS KV and its revision; None if nobody ever put one."""
    try:
        entry = await (await js.key_value(subjects.FAULTS_BUCKET)).get(subjects.FAULTS_KEY)
    except (BucketNotFoundError, KeyNotFoundError):
        return None
    return entry.revision, faults.parse(entry.value)


async def test_only_shard_0_publishes_the_faults(settings, nc, tmp_path):
    scenario = tmp_path / "rejecting.toml"
    scenario.write_text("[[phases]]\nregister_rate = 0\nrandom_order_rate = 0\n"
                        "faults = { reject = 0.5 }\n")  # fmt: skip
    quiet = changed(settings, seed=5, scenario=str(scenario), log_level="WARNING")
    js = nc.jetstream()

    async def rejecting() -> tuple[int, faults.Faults] | None:
        document = await published(js)
        return document if document and document[1].reject == 0.5 else None

    async with generator(changed(quiet, shard=Shard(1, 2))) as one:
        status, state = await call("GET", one)
        assert state["shard"] == "1/2"
        await asyncio.sleep(0.5)  # twice the leader's look at the scenario's faults
        assert await published(js) is None
        assert REGISTRY.get_sample_value("offsim_generator_shard_info", {"shard": "1/2"}) == 1.0

    async with generator(changed(quiet, shard=Shard(0, 2))):
        revision, _ = await eventually(rejecting)
        async with generator(changed(quiet, shard=Shard(1, 2))) as one:
            # The notifications service's faults are shard 0's to change; the generator's own
            # (malformed) are every shard's.
            status, body = await call("PUT", one, {"faults": {"reject": 0.1}})
            assert status == 409 and body["details"] == {"faults.reject": "published by shard 0"}
            status, state = await call("PUT", one, {"faults": {"malformed": 0.2}})
            assert status == 200 and state["faults"]["malformed"] == 0.2
        # Shard 1 came and went: what shard 0 published is untouched.
        assert (await published(js))[0] == revision
    # Shard 0 stopped: it leaves no fault behind.
    _, left = await published(js)
    assert left.reject == 0.0
