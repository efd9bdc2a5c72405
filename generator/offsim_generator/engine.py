"""The clock: one APScheduler job that turns simulated seconds into events, on time.

The tick job runs every TICK_S real seconds. Each tick asks the model for every simulated
second (window) that starts before now plus a short lookahead, and hands its events on: to the
dry run's writer, or to the services, each event at its own real time (`loop.call_at`). The
model's windows are fixed simulated seconds, so what is drawn never depends on when a tick
fired; only when it is sent does.

Open model: an event is sent when it is due, whether or not earlier ones were answered. At most
`max_in_flight` are in flight; one due while that many are is counted as overflow (by kind,
in the summary and in `offsim_generator_overflow_total`), not sent, and not silently lost.
What is in flight is whatever `perform` handed back: a coroutine (a request), run as a task,
or a future (a reading published without a task of its own, done when it is acknowledged).

Lag is how late things ran, in real seconds: the tick after its scheduled time (APScheduler's
run time), a window after its start, an event after its due time. The largest is the run's
`max_lag_s`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from . import metrics
from .dryrun import DryRun
from .model import Event, Model

log = logging.getLogger(__name__)

# Real seconds between two ticks, and how far ahead (in ticks) a tick draws events.
TICK_S = 0.1
LOOKAHEAD_TICKS = 2
# A tick gives the event loop back after this long (at a huge SIM_SPEED it falls behind, and
# the lag says so, rather than starving the HTTP server and the requests in flight).
MAX_TICK_WORK_S = 0.08
# Real seconds over which the event rate is measured.
RATE_WINDOW_S = 5.0
# Phases kept for a report: a week of an hourly repeating scenario at x60 is 10,080.
MAX_PHASES = 20_000
# A launch this much before its due time is on time (the loop's timers fire a little early); more
# means the clock was paused since it was scheduled.
PAUSE_SLACK_S = 0.01


class Engine:
    def __init__(
        self,
        model: Model,
        *,
        speed: float,
        duration: float | None = None,
        max_events: int | None = None,
        dry_run: DryRun | None = None,
        perform: Callable[[Event], Awaitable[object] | None] | None = None,
        max_in_flight: int = 100,
        budgets: Mapping[str, int] | None = None,
    ) -> None:
        if (dry_run is None) == (perform is None):
            raise ValueError("an engine either writes a dry run or performs events")
        self.model = model
        self.speed = speed
        self.duration = duration
        self.max_events = max_events
        self.dry_run = dry_run
        self.perform = perform
        self.max_in_flight = max_in_flight
        # Kinds with a bound of their own (the readings a broker has yet to acknowledge: cheap,
        # and thousands a second), apart from the requests' `max_in_flight`.
        self.budgets = dict(budgets or {})
        self._flying: dict[str, set[asyncio.Future]] = {}
        self.next_window = 0
        self.sent: Counter[str] = Counter()
        self.overflow: Counter[str] = Counter()
        self.max_lag_s = 0.0
        self.paused = False
        self.done = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._anchor_real = self._loop.time()
        self._anchor_sim = 0.0
        self._started_real = time.perf_counter()
        self._ended_real: float | None = None
        self._tick_started: datetime | None = None
        self._recent: deque[float] = deque()
        self._scheduler: AsyncIOScheduler | None = None
        self._held: list[Event] = []
        # The phases so far: name, simulated second, the wall-clock time it was due (for a
        # live run's report) and its faults; the latest MAX_PHASES of a repeating scenario.
        self.phases: deque[dict] = deque(maxlen=MAX_PHASES)

    # --- the simulated clock --------------------------------------------------------------

    def sim_now(self) -> float:
        if self.paused:
            return self._anchor_sim
        return self._anchor_sim + (self._loop.time() - self._anchor_real) * self.speed

    def due(self, t: float) -> float:
        """The loop time at which simulated second `t` is due."""
        return self._anchor_real + (t - self._anchor_sim) / self.speed

    def pause(self) -> None:
        if not self.paused:
            self._anchor_sim, self._anchor_real = self.sim_now(), self._loop.time()
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            self._anchor_real = self._loop.time()
            self.paused = False
            held, self._held = self._held, []
            for event in held:
                self._schedule(event)

    @property
    def event_rate(self) -> float:
        """Events sent a real second, over the last RATE_WINDOW_S."""
        now = self._loop.time()
        while self._recent and self._recent[0] < now - RATE_WINDOW_S:
            self._recent.popleft()
        return len(self._recent) / RATE_WINDOW_S

    @property
    def events(self) -> int:
        return self.dry_run.lines if self.dry_run else sum(self.sent.values())

    # --- running --------------------------------------------------------------------------

    def start(self) -> None:
        self._anchor_real = self._loop.time()
        self._started_real = time.perf_counter()
        scheduler = AsyncIOScheduler(timezone=UTC)
        # One tick at a time; ticks missed while one runs are merged (the next catches up on
        # every window), and never skipped however late (no misfire grace limit).
        scheduler.add_job(
            self.tick, "interval", seconds=TICK_S, id="tick", max_instances=1, coalesce=True,
            misfire_grace_time=None, next_run_time=datetime.now(UTC),
        )  # fmt: skip
        scheduler.add_listener(self._fired, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
        scheduler.start()
        self._scheduler = scheduler

    def _fired(self, event) -> None:
        if self._tick_started is not None and event.scheduled_run_time is not None:
            late = (self._tick_started - event.scheduled_run_time).total_seconds()
            self._lag(late)

    def _lag(self, late: float) -> None:
        if late > self.max_lag_s:
            self.max_lag_s = late
        metrics.LAG.observe(max(late, 0.0))

    async def stop(self, wait_s: float = 10.0) -> None:
        """No new tick; the requests in flight get `wait_s` to finish."""
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if self.in_flight:
            _, pending = await asyncio.wait(set(self.in_flight), timeout=wait_s)
            for future in pending:
                future.cancel()
        if self._ended_real is None:
            self._ended_real = time.perf_counter()

    @property
    def elapsed_s(self) -> float:
        end = self._ended_real if self._ended_real is not None else time.perf_counter()
        return end - self._started_real

    async def tick(self) -> None:
        self._tick_started = datetime.now(UTC)
        if self.done.is_set():
            return
        began = self._loop.time()
        horizon = self.sim_now() + LOOKAHEAD_TICKS * TICK_S * self.speed
        if self.duration is not None:
            horizon = min(horizon, self.duration)
        while self.next_window < horizon and not self.done.is_set():
            k = self.next_window
            self._lag(self._loop.time() - self.due(k))
            for event in self.model.window(k):
                self._dispatch(event)
            self.next_window = k + 1
            if self.model.scenario.ended(self.next_window):
                self._finish("the scenario ended")
            if self._loop.time() - began > MAX_TICK_WORK_S:
                break
        if self.duration is not None and self.next_window >= self.duration:
            if self.dry_run is not None:
                self.dry_run.advance(self.duration)
                self._finish("the duration is over")
            elif self.sim_now() >= self.duration:
                # Against the services, once the last events drawn were due and sent.
                self._finish("the duration is over")

    def _finish(self, why: str) -> None:
        if not self.done.is_set():
            log.info("generator stops: %s", why)
            self._ended_real = time.perf_counter()
            self.done.set()

    def _dispatch(self, event: Event) -> None:
        metrics.SCHEDULED.labels(event.kind).inc()
        if event.kind == "phase":
            metrics.set_phase(self.model.scenario.name, event.phase)
            log.info("phase %s at simulated second %d", event.phase, int(event.t))
            at = datetime.now(UTC) + timedelta(seconds=self.due(event.t) - self._loop.time())
            self.phases.append({
                "name": event.phase, "sim_s": event.t, "at": at.isoformat(),
                "faults": self.model.rates_at(event.t).faults.as_dict(),
            })  # fmt: skip
        if self.dry_run is not None:
            self.dry_run.handle(event)
            self._recent.append(self._loop.time())
            self._check_budget()
            return
        if event.kind == "phase":
            return
        self._schedule(event)

    def _schedule(self, event: Event) -> None:
        delay = self.due(event.t) - self._loop.time()
        if delay > 0:
            self._loop.call_later(delay, self._launch, event)
        else:
            self._launch(event)

    def _launch(self, event: Event) -> None:
        if self.done.is_set():
            return
        if self.paused:
            # Drawn ahead of the clock before the pause: it waits for the resume.
            self._held.append(event)
            return
        if self.due(event.t) - self._loop.time() > PAUSE_SLACK_S:
            # The clock was paused since this was scheduled: it is due later now.
            self._schedule(event)
            return
        self._lag(self._loop.time() - self.due(event.t))
        budget = event.kind if event.kind in self.budgets else ""
        flying = self._flying.setdefault(budget, set())
        if len(flying) >= self.budgets.get(budget, self.max_in_flight):
            self.overflow[event.kind] += 1
            metrics.OVERFLOW.labels(event.kind).inc()
            return
        assert self.perform is not None
        started = self.perform(event)
        if started is not None:
            # A coroutine becomes a task; a future stays what it is.
            future = asyncio.ensure_future(started, loop=self._loop)
            flying.add(future)
            metrics.IN_FLIGHT.set(self.flying)
            future.add_done_callback(lambda done: self._landed(flying, done))
        self.sent[event.kind] += 1
        self._recent.append(self._loop.time())
        self._check_budget()

    def _landed(self, flying: set[asyncio.Future], future: asyncio.Future) -> None:
        flying.discard(future)
        metrics.IN_FLIGHT.set(self.flying)

    @property
    def in_flight(self) -> set[asyncio.Future]:
        """Everything in flight, whatever its bound."""
        return set().union(*self._flying.values())

    @property
    def flying(self) -> int:
        """How many are in flight (`len(in_flight)`, without building the set)."""
        return sum(map(len, self._flying.values()))

    def _check_budget(self) -> None:
        if self.max_events is not None and self.events >= self.max_events:
            self._finish("the event budget is spent")

    def summary(self) -> dict:
        by_kind = self.dry_run.by_kind if self.dry_run else self.sent
        elapsed = self.elapsed_s
        return {
            "events": self.events,
            "by_kind": dict(sorted(by_kind.items())),
            "overflow": dict(sorted(self.overflow.items())),
            "max_lag_s": round(max(self.max_lag_s, 0.0), 4),
            "elapsed_s": round(elapsed, 3),
            "events_per_s": round(self.events / elapsed, 1) if elapsed > 0 else 0.0,
            "sim_s": self.next_window,
            "ssds": self.model.population.own_ssds,
            "scenario": self.model.scenario.name,
            "shard": str(self.model.shard),
            **({"kpis": self.dry_run.kpis(self.sim_end)} if self.dry_run else {}),
        }

    @property
    def sim_end(self) -> float:
        """The simulated second the run has reached."""
        end = float(self.next_window)
        return min(end, self.duration) if self.duration is not None else end
