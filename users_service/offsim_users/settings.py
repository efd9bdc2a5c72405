"""The users service's settings: the shared ones and its own."""

from __future__ import annotations

from offsim_common.settings import Duration, ServiceSettings, env
from pydantic import field_validator

# The default horizon of an applied reading's id (retention.py): the READINGS stream's age (12 h)
# plus the 12 h in which a device may send a reading again.
READING_RETENTION_S = 24 * 3600.0
# A reading whose ack was lost is handed out again after the consumer's ack wait (10 s) while
# a users replica runs; ids are kept well past that whatever the setting. (With every replica
# down for longer than the horizon, such a reading would be applied again: docs/retention.md.)
SHORTEST_READING_RETENTION_S = 300.0


class UsersSettings(ServiceSettings):
    http_port: int = env("HTTP_PORT", 8081, ge=0, le=65535)
    # Processes serving the port together (SO_REUSEPORT), each a full replica.
    http_workers: int = env("OFFSIM_HTTP_WORKERS", 1, ge=1)
    # How many products each new SSD watches.
    watched_products: int = env("OFFSIM_WATCHED_PRODUCTS", 3, ge=1)
    # How long an applied reading's id is remembered, so that the same reading sent again is
    # applied once (real seconds; 0 remembers every id for good).
    reading_retention: Duration = env("OFFSIM_READING_RETENTION", READING_RETENTION_S)
    # Real seconds between two samples of the stock for the stockout_share KPI
    # (stock_samples.py); 0 samples nothing.
    kpi_sample_s: float = env("OFFSIM_KPI_SAMPLE_S", 5.0, ge=0, le=3600)

    @field_validator("reading_retention")
    @classmethod
    def _long_enough(cls, value: float) -> float:
        if 0 < value < SHORTEST_READING_RETENTION_S:
            raise ValueError(f"must be 0 (for good) or at least {SHORTEST_READING_RETENTION_S:g}"
                             " s: a redelivered reading must still find its id")  # fmt: skip
        return value
