"""The orders service's settings: the shared ones, the delivery delays its reconciler reckons
with, and its own."""

from __future__ import annotations

from offsim_common.settings import DeliverySettings, env


class OrdersSettings(DeliverySettings):
    http_port: int = env("HTTP_PORT", 8082, ge=0, le=65535)
    # Processes serving the port together (SO_REUSEPORT), each a full replica.
    http_workers: int = env("OFFSIM_HTTP_WORKERS", 1, ge=1)
    # The reconciler: an order is overdue once its stage's maximum delay plus this margin has
    # passed (simulated seconds); it looks every `reconcile_interval` real seconds.
    reconcile_margin: float = env("OFFSIM_RECONCILE_MARGIN", 60.0, ge=0)
    reconcile_interval: float = env("OFFSIM_RECONCILE_INTERVAL", 5.0, gt=0)

    def overdue_after(self, delay_range: tuple[float, float]) -> float:
        """Real seconds after which a stage with these delays is overdue: its longest delay
        plus the margin."""
        return self.simulated(delay_range[1] + self.reconcile_margin)
