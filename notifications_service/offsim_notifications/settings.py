"""The notifications service's settings: the shared ones and the delays it plays."""

from __future__ import annotations

from offsim_common.settings import DeliverySettings, env


class NotificationsSettings(DeliverySettings):
    http_port: int = env("HTTP_PORT", 8083, ge=0, le=65535)
