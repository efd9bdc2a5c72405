"""The users service's settings: the shared ones and its own."""

from __future__ import annotations

from offsim_common.settings import ServiceSettings, env


class UsersSettings(ServiceSettings):
    http_port: int = env("HTTP_PORT", 8081, ge=0, le=65535)
    # Processes serving the port together (SO_REUSEPORT), each a full replica.
    http_workers: int = env("OFFSIM_HTTP_WORKERS", 1, ge=1)
    # How many products each new SSD watches.
    watched_products: int = env("OFFSIM_WATCHED_PRODUCTS", 3, ge=1)
