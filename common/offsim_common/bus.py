"""NATS and JetStream: connecting, the streams, publishing, and running durable consumers.

Every JetStream consumer in offsim runs through :func:`consume`, which writes down the ack policy
once: a handler that returns is acked (after its transaction committed); a message whose
`due_in` is still ahead (or a handler raising :class:`Defer`) is delivered again later; any
other error is logged and nak'ed with back-off. A payload that fails
validation, or a message that failed on every one of its `max_deliver` deliveries, is logged,
copied to the dead-letter stream (`deadletter.<durable>`) and terminated: one bad message never
stops a consumer, and none is lost without a trace.

Traces (`tracing.py`): every publish is a producer span whose context travels in the message's
`traceparent` header, and each handled message a consumer span, its child. A message sent back
because it is not due yet makes no span.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js import JetStreamContext, api
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from opentelemetry.trace import Span
from pydantic import BaseModel, ValidationError

from . import subjects, tracing
from .logs import request_id, request_id_from, request_id_headers
from .metrics import BATCH_SIZE, CONSUMER_PENDING, NATS_MESSAGES
from .nats_rights import FAULTS_STREAM, inbox_prefix
from .settings import nats_servers

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

# The streams' limits (docs/jetstream.md, "Stream limits"). Each stream keeps what its consumers
# may still need, and a size cap bounds it in bytes too. JetStream reserves every cap on each
# node that holds a replica when the stream is made: the caps together (4.9 GiB) must fit the
# nodes' max_file_store (8 GB in deploy/), or making the streams fails at start, naming it.
MIB = 1024**2
GIB = 1024**3
# Long enough that a service restarted within the hour re-publishing an event it had already
# published (crash between publish and ack) is de-duplicated by the server.
DUPLICATE_WINDOW_S = 3600.0
# Order events come a thousand a second from a large city, and the server keeps every id of
# the window in memory: with an hour's window, nats-server grew by 210 MB in the soak's 20
# minutes (bench/soak.py, docs/benchmarks.md). Ten minutes still covers what the window is
# for: a re-publish after a crash (within seconds of the restart) and the reconciler's copy of
# an order at SIM_SPEED=1 (overdue after 5 minutes) while the original waits in the stream.
# A copy past the window is handled once anyway: transitions only move forward and a delivery
# is added to stock once.
ORDERS_DUPLICATE_WINDOW_S = 600.0
# Order events are acted on within seconds (a stage's delay at most) and Postgres is the
# record: an event the stream no longer holds is announced again by the reconciler. Six hours
# of events for a person to look at, and never more than the cap (12 minutes of the 100,000
# x60 city's events: far more than a consumer needs, and a bound a soak reaches within the
# hour); past it the oldest go first.
ORDERS_MAX_AGE_S = 6 * 3600.0
ORDERS_MAX_BYTES = 256 * MIB
# users.registered is for displays, which follow it live.
USERS_MAX_AGE_S = 24 * 3600.0
USERS_MAX_BYTES = 128 * MIB
# Readings are kept until the users service has applied them (retention by interest: its
# durable's ack removes them), so the stream holds a backlog, not history. A backlog is kept
# 12 hours (a users service down that long) and up to the cap (2.6 hours of the 100,000 x60
# city's readings); a full stream refuses new readings (the device sees its publish fail and
# keeps it) rather than dropping stored ones. Their de-duplication is the database's (by
# reading id, offsim_users.retention): the server's window only spares it the copies a
# publisher re-sends at once, and a short one keeps the server's memory of ids small at
# thousands of readings a second.
READINGS_MAX_AGE_S = 12 * 3600.0
READINGS_MAX_BYTES = 4 * GIB
READINGS_DUPLICATE_WINDOW_S = 120.0
# How long an applied reading's batch may go unacknowledged before the stream hands it out
# again (a crashed replica's batch, to another or to itself).
READINGS_ACK_WAIT_S = 10.0
# Dead letters wait for a person; the newest matter most, so past the cap the oldest go.
DEAD_LETTER_MAX_AGE_S = 30 * 24 * 3600.0
DEAD_LETTER_MAX_BYTES = 512 * MIB
REASON_HEADER = "Offsim-Dead-Letter-Reason"


class Contradiction(Exception):
    """The message contradicts the database (it describes no order there): retrying cannot help,
    it is dead-lettered."""


PERMANENT_ERRORS = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError, Contradiction)
SUBJECT_HEADER = "Offsim-Original-Subject"


async def connect(
    url: str, name: str, user: str | None = None, password: str | None = None
) -> Client:
    """A connection that reconnects for ever, as `user` (none: anonymous) with replies in the
    user's own inboxes (nats_rights.inbox_prefix)."""
    nc = Client()

    async def on_error(exc: Exception) -> None:
        log.warning("nats: %s", exc)

    async def on_disconnect() -> None:
        if not (nc.is_closed or nc.is_draining):
            log.warning("nats: disconnected, reconnecting")

    async def on_reconnect() -> None:
        log.info("nats: reconnected")

    await nc.connect(
        nats_servers(url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        user=user,
        password=password,
        inbox_prefix=inbox_prefix(user),
    )
    return nc


# JetStream API errors that pass once a cluster has elected its leaders and its nodes have met:
# incomplete results, no peers for placement yet, not assigned to this server, temporarily
# unavailable, not the leader, too few servers for the replicas yet.
TRANSIENT_ERR_CODES = frozenset({10004, 10005, 10007, 10008, 10009, 10023})
# A stream of that name exists (another member made it between our look and our add).
STREAM_NAME_IN_USE = 10058
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 5.0


def transient(exc: BaseException) -> bool:
    """Whether a JetStream API call that failed this way may succeed if tried again: the
    server did not answer in time or at all (a node lost, a leader being elected, a reconnect),
    or said so itself. A bad configuration is not transient: it is raised at once."""
    if isinstance(
        exc, TimeoutError | NoRespondersError | NoStreamResponseError | ServiceUnavailableError
    ):
        return True
    return isinstance(exc, APIError) and exc.err_code in TRANSIENT_ERR_CODES


# How long a member waits at start for its streams (a cluster electing its first leaders
# takes seconds) before it gives up and says why: a misconfiguration the server reports as
# "not yet" (more replicas than it has nodes, limits no node can hold, no JetStream at all)
# would otherwise keep it waiting for ever.
SETUP_WAIT_S = 300.0


async def until_done(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    give_up_after_s: float | None = None,
    also: Callable[[BaseException], bool] = lambda exc: False,
) -> T:
    """`attempt()`, tried again with back-off (RETRY_FIRST_S doubling up to RETRY_MAX_S) for as
    long as it fails in a transient way, until it succeeds, the caller is cancelled, or (with
    `give_up_after_s`) it has failed that long: then its last error is raised. A service
    started while its cluster elects leaders waits for them instead of exiting, and a consumer
    re-bound during a leader change is bound once there is a leader. `also` says which other
    failures are worth waiting out."""
    delay = RETRY_FIRST_S
    failures = 0
    loop = asyncio.get_running_loop()
    deadline = None if give_up_after_s is None else loop.time() + give_up_after_s
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if not (transient(exc) or also(exc)) or (
                deadline is not None and loop.time() >= deadline
            ):
                raise
            failures += 1
            # The first failures of a leader change are expected; a long wait is worth saying.
            level = logging.INFO if failures < 4 else logging.WARNING
            log.log(level, "%s failed (%s: %s); trying again in %.2g s",
                    what, type(exc).__name__, exc, delay)  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)


async def ensure_streams(
    js: JetStreamContext,
    replicas: int = 1,
    wait_s: float | None = SETUP_WAIT_S,
    streams: Collection[str] | None = None,
) -> None:
    """Create or update the streams and the faults bucket, or with `streams` only those named
    (the bucket as nats_rights.FAULTS_STREAM): a member with a NATS user sets up the streams it
    uses, which are the ones it may (nats_rights). Every member calls it, whichever starts
    first wins. Waits, rather than fails, while the cluster is not ready: at most `wait_s`
    seconds (None: for as long as it takes).

    `replicas` is OFFSIM_STREAM_REPLICAS: on a clustered NATS, 3 keeps the streams available
    when a node is lost. Every service must be given the same value."""
    for config in stream_configs(replicas):
        if streams is None or config.name in streams:
            await until_done(f"setting up stream {config.name}", lambda c=config: _ensure(js, c),
                             wait_s)  # fmt: skip
    if streams is None or FAULTS_STREAM in streams:
        await until_done("setting up the faults bucket", lambda: _ensure_bucket(js, replicas),
                         wait_s)  # fmt: skip


def stream_configs(replicas: int) -> list[api.StreamConfig]:
    """What each stream keeps, and for how long (the constants above)."""
    limits, interest = api.RetentionPolicy.LIMITS, api.RetentionPolicy.INTEREST
    old, new = api.DiscardPolicy.OLD, api.DiscardPolicy.NEW
    return [
        api.StreamConfig(
            name=name,
            subjects=list(stream_subjects),
            storage=api.StorageType.FILE,
            retention=retention,
            max_age=max_age,
            max_bytes=max_bytes,
            discard=discard,
            duplicate_window=window,
            num_replicas=replicas,
        )
        for name, stream_subjects, retention, max_age, max_bytes, discard, window in (
            (subjects.ORDERS_STREAM, subjects.ORDERS_STREAM_SUBJECTS, limits, ORDERS_MAX_AGE_S,
             ORDERS_MAX_BYTES, old, ORDERS_DUPLICATE_WINDOW_S),
            (subjects.USERS_STREAM, subjects.USERS_STREAM_SUBJECTS, limits, USERS_MAX_AGE_S,
             USERS_MAX_BYTES, old, DUPLICATE_WINDOW_S),
            (subjects.READINGS_STREAM, subjects.READINGS_STREAM_SUBJECTS, interest,
             READINGS_MAX_AGE_S, READINGS_MAX_BYTES, new, READINGS_DUPLICATE_WINDOW_S),
            (subjects.DEAD_LETTER_STREAM, subjects.DEAD_LETTER_STREAM_SUBJECTS, limits,
             DEAD_LETTER_MAX_AGE_S, DEAD_LETTER_MAX_BYTES, old, DUPLICATE_WINDOW_S),
        )
    ]  # fmt: skip


# The durables made with their stream: a stream that keeps messages by interest drops at once
# a message that no consumer is there for, so a reading published before the users service
# first ran would be acknowledged and lost. Made with the config the consumer binds with
# (durable_config), so whichever comes first, the durable is the same.
STANDING_DURABLES = {
    subjects.READINGS_STREAM: (
        (subjects.USERS_APPLY_READINGS, subjects.SSD_READINGS_WILDCARD, READINGS_ACK_WAIT_S),
    ),
}


async def _ensure(js: JetStreamContext, config: api.StreamConfig) -> None:
    """Make the stream, or bring one made by another version to `config`, in place. A stream
    that keeps messages by interest is made, or kept, keeping every message until its standing
    durables exist: then none of its messages is ever without a consumer. (JetStream changes a
    stream's retention between limits and interest in place; when it becomes interest, the
    messages every durable has acknowledged are removed, the others stay.)"""
    standing = STANDING_DURABLES.get(config.name, ())
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        first = dataclasses.replace(config, retention=api.RetentionPolicy.LIMITS)
        try:
            info = await js.add_stream(first if standing else config)
            if not standing:
                return
        except BadRequestError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
            info = await js.stream_info(config.name)  # another member made it meanwhile
    for name, subject, ack_wait_s in standing:
        await _ensure_durable(js, config.name, durable_config(name, subject, ack_wait_s))
    await js.update_stream(_keep_replicas(config, info.config))


async def _ensure_durable(js: JetStreamContext, stream: str, config: api.ConsumerConfig) -> None:
    """Make the durable if it does not exist; one that does is its consumer's to configure."""
    try:
        await js.consumer_info(stream, config.durable_name)
    except NotFoundError:
        await js.add_consumer(stream, config)


def _keep_replicas(wanted: api.StreamConfig, stored: api.StreamConfig) -> api.StreamConfig:
    """Replicas only go up on their own: one member started without OFFSIM_STREAM_REPLICAS
    (1) must not take a cluster's streams down to a single copy. Lowering them is an operator's
    decision (`nats stream edit`)."""
    if (stored.num_replicas or 1) <= (wanted.num_replicas or 1):
        return wanted
    log.warning("%s has %d replicas and OFFSIM_STREAM_REPLICAS is %d: keeping %d",
                stored.name, stored.num_replicas, wanted.num_replicas,
                stored.num_replicas)  # fmt: skip
    return dataclasses.replace(wanted, num_replicas=stored.num_replicas)


async def _ensure_bucket(js: JetStreamContext, replicas: int) -> None:
    """The faults bucket (faults.py), replicated like the streams: made here, by every
    member at start, so that it never exists with fewer replicas than the streams."""
    try:
        await js.key_value(subjects.FAULTS_BUCKET)
    except BucketNotFoundError:
        try:
            await js.create_key_value(
                api.KeyValueConfig(bucket=subjects.FAULTS_BUCKET, history=1, replicas=replicas)
            )
            return
        except BadRequestError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
            # another member made it meanwhile
    info = await js.stream_info(f"KV_{subjects.FAULTS_BUCKET}")
    if (info.config.num_replicas or 1) < replicas:  # made by a run with fewer
        await js.update_stream(dataclasses.replace(info.config, num_replicas=replicas))


# How long an HTTP request waits for the stream's ack of an event it announces. Past it the
# request answers anyway (the order stands and is re-published): NATS down never holds it up.
REQUEST_PUBLISH_TIMEOUT_S = 0.5


# How many times in a row a de-duplicated publish may find its original gone (each lost copy
# names the next id): a bound, not a limit ever met.
MAX_LOST_COPIES = 8


async def publish(
    js: JetStreamContext,
    subject: str,
    message: BaseModel,
    msg_id: str,
    ack_timeout_s: float | None = None,
) -> None:
    """Publish and wait for the stream's ack; `msg_id` lets the server drop a re-publish.

    The server remembers ids for DUPLICATE_WINDOW_S even when the message itself is gone (a
    purge, a deletion): it would drop the re-announcement of a lost message as a duplicate. So
    a de-duplicated publish whose original the stream no longer holds is published again under
    an id derived from the lost copy's sequence (`<id>~<seq>`): the same for every publisher and
    replica, so that copy is de-duplicated in turn."""
    data = message.model_dump_json().encode()
    with tracing.publishing(subject, msg_id) as span:
        headers = tracing.inject({"Nats-Msg-Id": msg_id, **request_id_headers()})
        try:
            await _publish_data(js, subject, data, headers, ack_timeout_s)
        except Exception as exc:
            tracing.failed(span, exc)
            raise


async def _publish_data(
    js: JetStreamContext,
    subject: str,
    data: bytes,
    headers: dict[str, str],
    ack_timeout_s: float | None,
) -> None:
    for _ in range(MAX_LOST_COPIES):
        ack = await js.publish(subject, data, headers=headers, timeout=ack_timeout_s)
        if not ack.duplicate or await _still_stored(
            js, ack.stream, ack.seq, headers["Nats-Msg-Id"]
        ):
            return
        log.warning("%s: %s was lost from the stream (seq %s); publishing it again",
                    subject, headers["Nats-Msg-Id"], ack.seq)  # fmt: skip
        headers["Nats-Msg-Id"] = f"{headers['Nats-Msg-Id']}~{ack.seq}"
    raise RuntimeError(f"{subject}: {headers['Nats-Msg-Id']} lost {MAX_LOST_COPIES} times in a row")


async def publish_many(
    nc: Client,
    js: JetStreamContext,
    subject: str,
    messages: list[tuple[bytes, dict[str, str]]],
    ack_timeout_s: float = REQUEST_PUBLISH_TIMEOUT_S,
) -> list[Exception | None]:
    """Publish serialized messages (each with its `Nats-Msg-Id` among its headers) one after the
    other without waiting, then wait for all their acks together, for at most `ack_timeout_s`:
    one round trip for the lot instead of one each. One outcome per message, in order: None when
    the stream acknowledged it (and holds it), else why not. Not traced: a traced publish goes
    through `publish`, in its own span."""
    if not nc.is_connected:
        return [ConnectionError("NATS is not connected")] * len(messages)
    futures: list[asyncio.Future | Exception] = []
    for data, headers in messages:
        try:
            futures.append(await js.publish_async(subject, data, headers=headers))
        except Exception as exc:  # the connection went away meanwhile: the rest fail alike
            futures.append(exc)
    waiting = [f for f in futures if isinstance(f, asyncio.Future)]
    if waiting:
        _, late = await asyncio.wait(waiting, timeout=ack_timeout_s)
        for future in late:
            future.cancel()
    outcomes: list[Exception | None] = []
    for future, (data, headers) in zip(futures, messages, strict=True):
        if isinstance(future, Exception):
            outcomes.append(future)
        elif future.cancelled():
            outcomes.append(TimeoutError(f"no ack within {ack_timeout_s:g} s"))
        elif (exc := future.exception()) is not None:
            outcomes.append(exc)
        else:
            outcomes.append(await _settle(js, subject, data, headers, future.result()))
    return outcomes


async def _settle(
    js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str], ack: api.PubAck
) -> Exception | None:
    """A pipelined publish's ack; a duplicate whose original the stream lost is published
    again the way `publish` does it (rare: a purge or a lost disk)."""
    try:
        if ack.duplicate and not await _still_stored(
            js, ack.stream, ack.seq, headers["Nats-Msg-Id"]
        ):
            copy = {**headers, "Nats-Msg-Id": f"{headers['Nats-Msg-Id']}~{ack.seq}"}
            await _publish_data(js, subject, data, copy, REQUEST_PUBLISH_TIMEOUT_S)
    except Exception as exc:
        return exc
    return None


async def _still_stored(js: JetStreamContext, stream: str, seq: int, msg_id: str) -> bool:
    """Whether the stream still holds the message a duplicate ack points at."""
    try:
        stored = await js.get_msg(stream, seq)
    except NotFoundError:
        return False
    return (stored.headers or {}).get("Nats-Msg-Id") == msg_id


async def announce(
    nc: Client, js: JetStreamContext, subject: str, message: BaseModel, msg_id: str
) -> None:
    """Publish on behalf of an HTTP request: at once an error if NATS is not connected, and
    never longer than REQUEST_PUBLISH_TIMEOUT_S."""
    if not nc.is_connected:
        raise ConnectionError("NATS is not connected")
    await publish(js, subject, message, msg_id, ack_timeout_s=REQUEST_PUBLISH_TIMEOUT_S)


# Messages a durable hands out before it waits for their acks.
MAX_ACK_PENDING = 10_000


class Defer(Exception):
    """Not an error: the message is not due yet; deliver it again in `delay` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"deferred {delay:.3f}s")
        self.delay = delay


@dataclass(frozen=True)
class ConsumerSpec(Generic[M]):
    stream: str
    durable: str
    subject: str
    model: type[M]
    handler: Callable[[M, Msg], Awaitable[None]]
    # Seconds until a message is due (<= 0: now). One not due yet goes back to the stream with
    # that delay, before any span or handler: waiting leaves no trace but the stage's span.
    due_in: Callable[[M], float] | None = None
    ack_wait_s: float = 30.0
    # With back-off capped at 30 s, about 45 minutes of retries before a message is dead-lettered.
    max_deliver: int = 100
    max_ack_pending: int = MAX_ACK_PENDING
    batch: int = 64
    # Applies the due messages of a fetched batch at once (one transaction), or raises: then
    # each is handled alone by `handler`, so one bad message is dead-lettered by itself and the
    # others still apply. Acked, each, only after it returns. With tracing on, messages are
    # handled one by one, each in its own span.
    batch_handler: Callable[[list[tuple[M, Msg]]], Awaitable[None]] | None = None
    fetch_timeout_s: float = 5.0
    fetch_retry_s: float = 1.0
    # After a fetch that found fewer than `batch` messages (the consumer has caught up), wait
    # this long before the next, so that what arrives meanwhile is applied as one batch: a few
    # tens of milliseconds more per stage, in exchange for one fetch, one transaction and one
    # burst of acks for many messages instead of one each (the stages themselves last seconds).
    # A full batch is followed at once, so a backlog is never slowed down.
    linger_s: float = 0.0
    # Told of each message that fails validation (it is dead-lettered), for a count of its own.
    on_invalid: Callable[[Msg], None] | None = None


def _retry_delay(msg: Msg) -> float:
    attempt = msg.metadata.num_delivered or 1
    return min(0.5 * 2 ** (attempt - 1), 30.0)


async def _handle(js: JetStreamContext, spec: ConsumerSpec[M], msg: Msg) -> None:
    # The request id that caused this message goes on every log line and message it causes.
    token = request_id.set(request_id_from(msg.headers))
    try:
        outcome = await _dispatch(js, spec, msg)
    except Exception as exc:
        # Acknowledging (or storing a dead letter) failed, the connection being lost: the
        # server delivers the message again after ack_wait.
        log.warning("%s: could not settle a message on %s: %r", spec.durable, msg.subject, exc)
        outcome = "unsettled"
    finally:
        request_id.reset(token)
    NATS_MESSAGES.labels(spec.durable, outcome).inc()


async def _dispatch(js: JetStreamContext, spec: ConsumerSpec[M], msg: Msg) -> str:
    try:
        payload = spec.model.model_validate_json(msg.data)
    except ValidationError as exc:
        reason = f"invalid: {exc.errors(include_url=False, include_input=False)}"
        log.error("%s: invalid message on %s: %s; data=%r",
                  spec.durable, msg.subject, reason, msg.data[:500])  # fmt: skip
        with tracing.consuming(msg, spec.durable) as span:
            tracing.failed(span, description=reason[:200])
            await dead_letter(js, spec, msg, reason)
        if spec.on_invalid is not None:  # once it is dead-lettered: it will not come back
            spec.on_invalid(msg)
        return "dead_letter"
    if spec.due_in is not None and (remaining := spec.due_in(payload)) > 0:
        await msg.nak(delay=remaining)
        return "defer"
    with tracing.consuming(msg, spec.durable) as span:
        outcome = await _run(js, spec, msg, payload, span)
        span.set_attribute("offsim.outcome", outcome)
        return outcome


async def _run(
    js: JetStreamContext, spec: ConsumerSpec[M], msg: Msg, payload: M, span: Span
) -> str:
    try:
        await spec.handler(payload, msg)
    except Defer as defer:
        span.add_event("deferred", {"offsim.delay_s": defer.delay})
        await msg.nak(delay=defer.delay)
        return "defer"
    except Exception as exc:
        tracing.failed(span, exc)
        delivered = msg.metadata.num_delivered or 1
        if isinstance(exc, PERMANENT_ERRORS):
            # Retrying cannot help: the data contradicts the database (an unknown order, a
            # value out of a column's range). Keep it for a person instead.
            log.error("%s: %s cannot be applied: %r", spec.durable, msg.subject, exc)
            await dead_letter(js, spec, msg, f"cannot be applied: {exc!r}")
            return "dead_letter"
        if delivered >= spec.max_deliver:
            log.exception("%s: failed on %s %d times, giving up",
                          spec.durable, msg.subject, delivered)  # fmt: skip
            await dead_letter(js, spec, msg, f"failed {delivered} times: {exc!r}")
            return "dead_letter"
        log.exception("%s: failed on %s (delivery %d), will retry",
                      spec.durable, msg.subject, delivered)  # fmt: skip
        await msg.nak(delay=_retry_delay(msg))
        return "nak"
    await msg.ack()
    return "ack"


async def dead_letter(js: JetStreamContext, spec: ConsumerSpec, msg: Msg, reason: str) -> None:
    """Keep the message on deadletter.<durable> for a person to read, then stop its deliveries.
    Terminated only once the copy is stored: if storing fails, the message comes back."""
    headers = {
        **(msg.headers or {}),
        REASON_HEADER: reason[:500],
        SUBJECT_HEADER: msg.subject,
        "Nats-Msg-Id": f"{spec.durable}-{msg.metadata.sequence.stream}",
    }
    tracing.inject(headers)  # the consumer's span, where the message was given up
    await js.publish(f"{subjects.DEAD_LETTER_PREFIX}.{spec.durable}", msg.data, headers=headers)
    await msg.term()


def _consumer_config(spec: ConsumerSpec) -> api.ConsumerConfig:
    return durable_config(spec.durable, spec.subject, spec.ack_wait_s, spec.max_ack_pending)


def durable_config(
    durable: str, subject: str, ack_wait_s: float, max_ack_pending: int = MAX_ACK_PENDING
) -> api.ConsumerConfig:
    """The server's side of a durable consumer (a ConsumerSpec's, or a standing durable's)."""
    return api.ConsumerConfig(
        durable_name=durable,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=ack_wait_s,
        # Unlimited on the server, which would drop a message silently at its limit (a timed-out
        # ack or a lost connection counts as a delivery too); `spec.max_deliver` is applied by
        # `_dispatch`, which dead-letters instead.
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
        filter_subject=subject,
    )


async def _bind(js: JetStreamContext, spec: ConsumerSpec, replicas: int):
    """Create or update the durable (so a changed setting reaches a durable kept from an older
    version), then bind to it."""
    try:
        await js.add_consumer(spec.stream, _consumer_config(spec))
    except NotFoundError:
        # The stream itself is gone (a NATS restarted without its storage): make it again,
        # waiting for the cluster as long as it takes (the consumer must not stop for good).
        await ensure_streams(js, replicas, wait_s=None, streams=(spec.stream,))
        await js.add_consumer(spec.stream, _consumer_config(spec))
    return await js.pull_subscribe_bind(spec.durable, spec.stream)


async def consume(
    js: JetStreamContext, spec: ConsumerSpec[M], ready: asyncio.Event | None = None,
    replicas: int = 1,
) -> None:  # fmt: skip
    """Run a durable pull consumer until cancelled. Replicas of a service bind the same durable,
    so each message goes to one of them. If the durable disappears from the server, it is made
    again."""
    while True:
        sub = await until_done(f"binding consumer {spec.durable}",
                               lambda: _bind(js, spec, replicas))  # fmt: skip
        if ready is not None:
            ready.set()
        try:
            await pull_forever(js, sub, spec)
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may already be closing
                pass
        log.warning("%s: the consumer is gone from the server; making it again", spec.durable)


# Consecutive fetch failures that mean the durable is gone, not a passing disconnection.
GONE_AFTER = 3


async def pull_forever(
    js: JetStreamContext, sub: JetStreamContext.PullSubscription, spec: ConsumerSpec[M]
) -> None:
    """Fetch and handle batches until cancelled, or return when the durable is gone."""
    missing = 0
    sizes = BATCH_SIZE.labels(spec.durable)
    pending = CONSUMER_PENDING.labels(spec.durable)
    while True:
        try:
            msgs = await sub.fetch(spec.batch, timeout=spec.fetch_timeout_s)
        except TimeoutError:
            # Nothing to fetch: nats' own TimeoutError, or asyncio's, which a batch fetch raises
            # when its deadline passes between its two pull requests.
            missing = 0
            pending.set(0)
            continue
        except Exception as exc:
            # A reconnect, a server restart, an API error: log, back off, go on.
            if isinstance(exc, NotFoundError | ServiceUnavailableError):
                missing += 1
                if missing >= GONE_AFTER:
                    return
            log.warning("%s: fetch failed (%r), retrying", spec.durable, exc)
            await asyncio.sleep(spec.fetch_retry_s)
            continue
        missing = 0
        sizes.observe(len(msgs))
        if msgs:
            # The server's count of what is left behind the last message: free with each fetch.
            pending.set(msgs[-1].metadata.num_pending or 0)
        if spec.batch_handler is not None and len(msgs) > 1 and not tracing.enabled():
            await _handle_batch(js, spec, msgs)
        else:
            await asyncio.gather(*(_handle(js, spec, m) for m in msgs))
        if len(msgs) < spec.batch and spec.linger_s > 0:
            # Caught up: let the next batch gather (see ConsumerSpec.linger_s).
            await asyncio.sleep(spec.linger_s)


async def _handle_batch(js: JetStreamContext, spec: ConsumerSpec[M], msgs: list[Msg]) -> None:
    """Validate each message (dead-letter the invalid, send back those not due), apply the rest
    with `spec.batch_handler` in one go and ack each; if that fails, handle each alone."""
    ready: list[tuple[M, Msg]] = []
    for msg in msgs:
        try:
            payload = spec.model.model_validate_json(msg.data)
        except ValidationError:
            await _handle(js, spec, msg)  # dead-lettered there, with its reason
            continue
        if spec.due_in is not None and spec.due_in(payload) > 0:
            await _handle(js, spec, msg)  # sent back there with its delay
            continue
        ready.append((payload, msg))
    if not ready:
        return
    try:
        await spec.batch_handler(ready)
    except Exception as exc:
        log.info("%s: a batch of %d failed (%r); handling each alone",
                 spec.durable, len(ready), exc)  # fmt: skip
        await asyncio.gather(*(_handle(js, spec, msg) for _, msg in ready))
        return
    for _, msg in ready:
        try:
            await msg.ack()
            outcome = "ack"
        except Exception as exc:  # the connection is lost: the server delivers it again
            log.warning("%s: could not ack a message on %s: %r", spec.durable, msg.subject, exc)
            outcome = "unsettled"
        NATS_MESSAGES.labels(spec.durable, outcome).inc()


async def start_consumers(
    js: JetStreamContext,
    specs: list[ConsumerSpec],
    replicas: int = 1,
    linger_s: float | None = None,
) -> list[asyncio.Task]:
    """Start each consumer in a task and return once all are bound to their durables;
    `linger_s`, if given, replaces each spec's own."""
    tasks = []
    for spec in specs:
        if linger_s is not None:
            spec = dataclasses.replace(spec, linger_s=linger_s)
        ready = asyncio.Event()
        task = asyncio.create_task(consume(js, spec, ready, replicas), name=spec.durable)
        task.add_done_callback(_report_stopped)
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            waiter.cancel()
            task.result()  # raises why the consumer could not start
        tasks.append(task)
    return tasks


def _report_stopped(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("consumer %s stopped", task.get_name(), exc_info=task.exception())


def stopped_consumers(tasks: list[asyncio.Task]) -> list[str]:
    """Names of consumers that are no longer running (health reports them)."""
    return [task.get_name() for task in tasks if task.done()]


async def stop_tasks(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def watch(
    js: JetStreamContext, watched: list[str], cb: Callable[[Msg], Awaitable[None]]
) -> list:
    """Follow subjects for display, from now on, as the streams store them: ordered ephemeral
    consumers, so a re-publish the stream de-duplicated is not shown twice (a plain
    subscription would see both copies). Each message shown continues its trace."""

    async def shown(msg: Msg) -> None:
        with tracing.consuming(msg, "display"):
            await cb(msg)

    callback = shown if tracing.enabled() else cb

    async def follow(subject: str):
        return await js.subscribe(
            subject, cb=callback, ordered_consumer=True, deliver_policy=api.DeliverPolicy.NEW
        )

    # A viewer may not make streams (nats_rights): one started before the services waits for
    # theirs to be made.
    def not_made_yet(exc: BaseException) -> bool:
        return isinstance(exc, NotFoundError)

    return [
        await until_done(
            f"following {subject}", lambda s=subject: follow(s), SETUP_WAIT_S, not_made_yet
        )
        for subject in watched
    ]
