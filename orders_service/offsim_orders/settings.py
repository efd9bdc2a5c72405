"""The orders service's settings: the shared ones, the delivery delays its reconciler reckons
with, and its own."""

from __future__ import annotations

from offsim_common.settings import DeliverySettings, Duration, env

# A century: past it a retention is "for ever" in all but name (and the longest interval
# Postgres computes with ease).
LONGEST_RETENTION_S = 100 * 365 * 86400.0


class OrdersSettings(DeliverySettings):
    http_port: int = env("HTTP_PORT", 8082, ge=0, le=65535)
    # Processes serving the port together (SO_REUSEPORT), each a full replica.
    http_workers: int = env("OFFSIM_HTTP_WORKERS", 1, ge=1)
    # The reconciler: an order is overdue once its stage's maximum delay plus this margin has
    # passed (simulated seconds); it looks every `reconcile_interval` real seconds.
    reconcile_margin: float = env("OFFSIM_RECONCILE_MARGIN", 60.0, ge=0)
    reconcile_interval: float = env("OFFSIM_RECONCILE_INTERVAL", 5.0, gt=0)
    # Finished orders (completed and in stock, or cancelled) are deleted this long after they
    # finished, in real seconds (not simulated: it is about disk, which fills in real time);
    # 0 keeps every order (retention.py, docs/retention.md).
    order_retention: Duration = env("OFFSIM_ORDER_RETENTION", 7 * 86400.0, le=LONGEST_RETENTION_S)

    def overdue_after(self, delay_range: tuple[float, float]) -> float:
        """Real seconds after which a stage with these delays is overdue: its longest delay
        plus the margin."""
        return self.simulated(delay_range[1] + self.reconcile_margin)
