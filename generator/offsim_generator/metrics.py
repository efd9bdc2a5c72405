"""The generator's Prometheus metrics (beside `offsim_generator_events_total`, sent and failed
by event, in offsim_common.metrics), served at `/metrics` on its HTTP_PORT."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

from .shard import Shard

SCHEDULED = Counter(
    "offsim_generator_events_scheduled_total", "Events the population model drew, by kind",
    ["event"],
)  # fmt: skip
OVERFLOW = Counter(
    "offsim_generator_overflow_total",
    "Events not sent because max_in_flight requests were in flight, by kind",
    ["event"],
)
MALFORMED = Counter(
    "offsim_generator_malformed_total",
    "Requests sent malformed on purpose, by event and outcome (rejected: a 4xx; accepted: not)",
    ["event", "outcome"],
)
IN_FLIGHT = Gauge("offsim_generator_in_flight", "Requests the generator has in flight")
LAG = Histogram(
    "offsim_generator_lag_seconds",
    "How late, in real seconds, a tick, a simulated second or an event ran",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EVENT_RATE = Gauge("offsim_generator_event_rate", "Events sent a real second, lately")
POPULATION = Gauge(
    "offsim_generator_ssds", "SSDs in the simulated population (a shard's: its households')"
)
SHARD = Info(
    "offsim_generator_shard", "Which share of the households this generator plays: I/N, 0-based"
)
PHASE = Gauge("offsim_generator_phase", "1 for the scenario's current phase", ["scenario", "phase"])

_current: tuple[str, str] | None = None


def set_shard(shard: Shard) -> None:
    SHARD.info({"shard": str(shard)})


def set_phase(scenario: str, phase: str) -> None:
    global _current
    if _current is not None:
        PHASE.labels(*_current).set(0)
    _current = (scenario, phase)
    PHASE.labels(scenario, phase).set(1)
