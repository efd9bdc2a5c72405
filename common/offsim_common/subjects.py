"""NATS subject, stream, durable-consumer and queue-group names: the wire contract.

The three order subjects and ``orders.random`` keep the original system's names so that its
clients stay compatible. ``orders.random`` is a plain request/reply subject and must never be
captured by a stream: JetStream would answer the request's inbox with a publish ack.
"""

import re

ORDERS_RANDOM = "orders.random"
ORDERS_PENDING = "orders.pending"
ORDERS_SHIPPED = "orders.shipped"
ORDERS_COMPLETED = "orders.completed"
# A terminal status: the supplier rejected the order (a fault injected on purpose).
ORDERS_CANCELLED = "orders.cancelled"
USERS_REGISTERED = "users.registered"
# What an SSD saw used: one reading per message on ssds.<ssd_id>.readings (events.SsdReading).
# MQTT devices publish the same on topic ssds/<ssd_id>/readings (QoS 1): NATS's own MQTT
# listener maps `/` to `.`, so both reach the READINGS stream.
SSD_READINGS_WILDCARD = "ssds.*.readings"


def ssd_readings(ssd_id: int) -> str:
    """The subject an SSD publishes its readings on."""
    return f"ssds.{ssd_id}.readings"


def ssd_readings_topic(ssd_id: int) -> str:
    """The same, as the MQTT topic a device publishes to."""
    return f"ssds/{ssd_id}/readings"


def ssd_of_readings_subject(subject: str) -> int | None:
    """The SSD id a readings subject names, or None if it names none."""
    parts = subject.split(".")
    # ASCII digits only: str.isdigit() takes "²", which int() refuses.
    if len(parts) == 3 and parts[0] == "ssds" and parts[2] == "readings":
        if re.fullmatch(r"[0-9]{1,19}", parts[1]):
            return int(parts[1])
    return None


ORDERS_STREAM = "ORDERS"
ORDERS_STREAM_SUBJECTS = (ORDERS_PENDING, ORDERS_SHIPPED, ORDERS_COMPLETED, ORDERS_CANCELLED)
USERS_STREAM = "USERS"
USERS_STREAM_SUBJECTS = (USERS_REGISTERED,)
READINGS_STREAM = "READINGS"
READINGS_STREAM_SUBJECTS = (SSD_READINGS_WILDCARD,)
# Messages a consumer gave up on (invalid, or failing on every delivery), kept for a person to
# read: deadletter.<durable>, with the reason and the original subject in headers.
DEAD_LETTER_STREAM = "DEADLETTER"
DEAD_LETTER_PREFIX = "deadletter"
DEAD_LETTER_STREAM_SUBJECTS = (f"{DEAD_LETTER_PREFIX}.>",)

# Durable consumers, named <service>-<step>. Replicas of a service share its durables, so each
# event is handled by one replica.
NOTIFICATIONS_SHIP = "notifications-ship"
NOTIFICATIONS_DELIVER = "notifications-deliver"
ORDERS_RECORD_SHIPPED = "orders-record-shipped"
ORDERS_RECORD_COMPLETED = "orders-record-completed"
ORDERS_RECORD_CANCELLED = "orders-record-cancelled"
USERS_RESTOCK = "users-restock"
USERS_APPLY_READINGS = "users-apply-readings"

# Both services answer orders.random (scatter-gather), so each needs its own queue group:
# with nats.micro's default group "q" only one of the two would ever answer.
USERS_QUEUE = "users"
ORDERS_QUEUE = "orders"

# The faults the notifications service injects (supplier delay, rejections, courier spikes):
# one JSON document (offsim_common.faults.Faults) under FAULTS_KEY in this KV bucket, set by the
# generator and watched by every notifications replica.
FAULTS_BUCKET = "offsim_faults"
FAULTS_KEY = "current"
