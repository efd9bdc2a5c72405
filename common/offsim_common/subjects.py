"""NATS subject, stream, durable-consumer and queue-group names: the wire contract.

The three order subjects and ``orders.random`` keep the original system's names so that its
clients stay compatible. ``orders.random`` is a plain request/reply subject and must never be
captured by a stream: JetStream would answer the request's inbox with a publish ack.
"""

ORDERS_RANDOM = "orders.random"
ORDERS_PENDING = "orders.pending"
ORDERS_SHIPPED = "orders.shipped"
ORDERS_COMPLETED = "orders.completed"
# A terminal status: the supplier rejected the order (a fault injected on purpose).
ORDERS_CANCELLED = "orders.cancelled"
USERS_REGISTERED = "users.registered"

ORDERS_STREAM = "ORDERS"
ORDERS_STREAM_SUBJECTS = (ORDERS_PENDING, ORDERS_SHIPPED, ORDERS_COMPLETED, ORDERS_CANCELLED)
USERS_STREAM = "USERS"
USERS_STREAM_SUBJECTS = (USERS_REGISTERED,)
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

# Both services answer orders.random (scatter-gather), so each needs its own queue group:
# with nats.micro's default group "q" only one of the two would ever answer.
USERS_QUEUE = "users"
ORDERS_QUEUE = "orders"

# The faults the notifications service injects (supplier delay, rejections, courier spikes):
# one JSON document (offsim_common.faults.Faults) under FAULTS_KEY in this KV bucket, set by the
# generator and watched by every notifications replica.
FAULTS_BUCKET = "offsim_faults"
FAULTS_KEY = "current"
