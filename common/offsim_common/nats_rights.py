"""What each component may do on NATS: the subjects it may publish and subscribe to, JetStream's
API included, and the nats-server `authorization` block that enforces them.

The rule (docs/security.md): a component publishes only the events it is the source of,
subscribes only to what it consumes, its own inbox and the requests it serves; it may make
and update the streams it uses (so that start order never matters: the configuration is the
same constant everywhere, bus.stream_configs) and make, read and pull only its own durables.
No component may delete or purge a stream, delete a message or a durable: nothing in offsim
needs to, and an operator does it with an account of their own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import subjects as s

JS = "$JS.API"
FAULTS_STREAM = f"KV_{s.FAULTS_BUCKET}"


def inbox_prefix(user: str | None) -> str:
    """Where a user's replies arrive: its own inboxes, so that no component reads another's
    replies (nats-py's `inbox_prefix`)."""
    return f"_INBOX.{user}" if user else "_INBOX"


@dataclass(frozen=True)
class Rights:
    # Streams it makes and updates at start (bus.ensure_streams), and may read the info of.
    streams: tuple[str, ...] = ()
    # (stream, durable) pairs it makes, binds to, pulls from and acknowledges.
    durables: tuple[tuple[str, ...], ...] = ()
    # Streams it watches with ordered ephemeral consumers (displays).
    watches: tuple[str, ...] = ()
    # Subjects it publishes: its events (and the stream of each, whose messages it may look up
    # by sequence: bus._still_stored) and the requests it sends.
    publishes: tuple[str, ...] = ()
    # Plain subscriptions (requests it serves, events it shows).
    subscribes: tuple[str, ...] = ()
    # Serves requests (nats.micro): may answer on the reply subject it was given.
    serves: bool = False
    # Writes the faults bucket (the generator) or reads it (the notifications service).
    faults: str | None = None

    def publish_allow(self) -> list[str]:
        allow = list(self.publishes)
        for stream in self.streams:
            allow += [f"{JS}.STREAM.INFO.{stream}", f"{JS}.STREAM.CREATE.{stream}",
                      f"{JS}.STREAM.UPDATE.{stream}", f"{JS}.STREAM.MSG.GET.{stream}"]  # fmt: skip
        for stream, durable in self.durables:
            allow += [
                f"{JS}.CONSUMER.CREATE.{stream}.{durable}",
                f"{JS}.CONSUMER.CREATE.{stream}.{durable}.>",
                f"{JS}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
                f"{JS}.CONSUMER.INFO.{stream}.{durable}",
                f"{JS}.CONSUMER.MSG.NEXT.{stream}.{durable}",
                f"$JS.ACK.{stream}.{durable}.>",
            ]
        if self.watches:
            allow.append(f"{JS}.STREAM.NAMES")
        for stream in self.watches:
            allow += [f"{JS}.STREAM.INFO.{stream}", *_ephemeral(stream)]
        if self.faults is not None:
            allow += [f"{JS}.DIRECT.GET.{FAULTS_STREAM}.>", f"{JS}.DIRECT.GET.{FAULTS_STREAM}"]
            if self.faults == "write":
                allow.append(f"$KV.{s.FAULTS_BUCKET}.>")
            else:
                allow += _ephemeral(FAULTS_STREAM)
        return list(dict.fromkeys(allow))

    def subscribe_allow(self, user: str) -> list[str]:
        allow = [f"{inbox_prefix(user)}.>", *self.subscribes]
        if self.serves:
            # nats.micro's discovery: $SRV.PING, $SRV.INFO.<name>, $SRV.STATS.<name>.<id>.
            allow.append("$SRV.>")
        return allow


def _ephemeral(stream: str) -> list[str]:
    """An ordered consumer's (a display's, a watcher's): made unnamed or named by the client,
    its flow control answered. Not deleted by the client (it goes once inactive): a right to
    delete consumers would be one to delete the services' durables too."""
    return [f"{JS}.CONSUMER.CREATE.{stream}", f"{JS}.CONSUMER.CREATE.{stream}.>",
            f"{JS}.CONSUMER.INFO.{stream}.>", f"$JS.FC.{stream}.>"]  # fmt: skip


def _dead_letters(*durables: str) -> tuple[str, ...]:
    return tuple(f"{s.DEAD_LETTER_PREFIX}.{durable}" for durable in durables)


# Each component's rights; the etl does not connect to NATS, so its user may do nothing.
RIGHTS: dict[str, Rights] = {
    "users": Rights(
        streams=(s.ORDERS_STREAM, s.USERS_STREAM, s.READINGS_STREAM, s.DEAD_LETTER_STREAM),
        durables=((s.ORDERS_STREAM, s.USERS_RESTOCK), (s.READINGS_STREAM, s.USERS_APPLY_READINGS)),
        publishes=(s.USERS_REGISTERED, *_dead_letters(s.USERS_RESTOCK, s.USERS_APPLY_READINGS)),
        subscribes=(s.ORDERS_RANDOM,),
        serves=True,
    ),
    "orders": Rights(
        streams=(s.ORDERS_STREAM, s.DEAD_LETTER_STREAM),
        durables=tuple(
            (s.ORDERS_STREAM, d)
            for d in (s.ORDERS_RECORD_SHIPPED, s.ORDERS_RECORD_COMPLETED, s.ORDERS_RECORD_CANCELLED)
        ),
        publishes=(
            s.ORDERS_PENDING,
            *_dead_letters(
                s.ORDERS_RECORD_SHIPPED, s.ORDERS_RECORD_COMPLETED, s.ORDERS_RECORD_CANCELLED
            ),
        ),
        subscribes=(s.ORDERS_RANDOM,),
        serves=True,
    ),
    "notifications": Rights(
        streams=(s.ORDERS_STREAM, s.DEAD_LETTER_STREAM, FAULTS_STREAM),
        durables=(
            (s.ORDERS_STREAM, s.NOTIFICATIONS_SHIP),
            (s.ORDERS_STREAM, s.NOTIFICATIONS_DELIVER),
        ),
        publishes=(
            s.ORDERS_SHIPPED,
            s.ORDERS_COMPLETED,
            s.ORDERS_CANCELLED,
            *_dead_letters(s.NOTIFICATIONS_SHIP, s.NOTIFICATIONS_DELIVER),
        ),
        faults="read",
    ),
    "generator": Rights(
        # READINGS is made with its standing durable (bus.STANDING_DURABLES), which the
        # generator makes when it starts first; it never pulls from it.
        streams=(s.READINGS_STREAM, FAULTS_STREAM),
        publishes=(
            s.SSD_READINGS_WILDCARD,
            s.ORDERS_RANDOM,
            f"{JS}.CONSUMER.CREATE.{s.READINGS_STREAM}.{s.USERS_APPLY_READINGS}.>",
            f"{JS}.CONSUMER.CREATE.{s.READINGS_STREAM}.{s.USERS_APPLY_READINGS}",
            f"{JS}.CONSUMER.INFO.{s.READINGS_STREAM}.{s.USERS_APPLY_READINGS}",
        ),
        faults="write",
    ),
    # Shows the events (and `offsim up`'s and `offsim feed`'s live feed, which connect as it).
    "dashboard": Rights(watches=(s.ORDERS_STREAM, s.USERS_STREAM)),
    "etl": Rights(),
    # Every SSD: its readings only (over NATS, the stream's ack comes to its inbox; over MQTT,
    # QoS 1's PUBACK).
    "device": Rights(publishes=(s.SSD_READINGS_WILDCARD,)),
}


def streams_of(component: str | None) -> tuple[str, ...] | None:
    """The streams (and the faults bucket's) a component sets up at start; None: all of them
    (a component with no NATS user, on a server without authorization)."""
    return None if component is None else RIGHTS[component].streams


def permissions(component: str, user: str) -> dict:
    rights = RIGHTS[component]
    publish = rights.publish_allow()
    subscribe = rights.subscribe_allow(user)
    # nats-server reads an empty allow list as "no restriction": nothing allowed is a deny of all.
    perms: dict = {
        "publish": {"allow": publish} if publish else {"deny": [">"]},
        "subscribe": {"allow": subscribe} if subscribe else {"deny": [">"]},
    }
    if rights.serves:
        perms["allow_responses"] = True
    return perms


def authorization(users: Mapping[str, Mapping[str, str]], extra: Iterable[dict] = ()) -> str:
    """The nats-server `authorization` block for these users (credentials' "nats" section: one
    per component), plus `extra` users (an operator's, given whole). No user, no anonymous
    access: the server refuses a connection without a user of the block."""
    entries = [
        {"user": entry["user"], "password": entry["password"],
         "permissions": permissions(component, entry["user"])}
        for component, entry in users.items()
    ]  # fmt: skip
    entries += list(extra)
    # JSON is valid nats-server configuration, and escapes whatever a password holds.
    body = ",\n".join(f"    {json.dumps(entry)}" for entry in entries)
    return f"authorization {{\n  users: [\n{body}\n  ]\n}}\n"
