"""The generator's settings: the shared ones, where the services answer, the delays its dry run
plays, and the population's own."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from offsim_common.settings import ApiUrls, DeliverySettings, env
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import NoDecode

from .shard import Shard

# How the SSDs report what they used: JetStream (ssds.<id>.readings), MQTT QoS 1 on NATS's
# MQTT listener (ssds/<id>/readings), or the users service's POST /api/ssds/{id}/consume.
DeviceTransport = Literal["nats", "mqtt", "http"]
DEVICE_TRANSPORTS: tuple[str, ...] = ("nats", "mqtt", "http")
MQTT_DEFAULT_PORT = 1883


class GeneratorSettings(DeliverySettings, ApiUrls):
    http_port: int = env("HTTP_PORT", 8084, ge=0, le=65535)
    # The built-in scenarios' rates: the original's clock, one event every `tick_seconds`
    # shared by the weights (15 registrations and 15 random orders an hour with the defaults).
    tick_seconds: float = env("OFFSIM_TICK_SECONDS", 60.0, ge=0)
    weight_register: float = env("OFFSIM_WEIGHT_REGISTER", 1.0, ge=0)
    weight_random_order: float = env("OFFSIM_WEIGHT_RANDOM_ORDER", 1.0, ge=0)
    weight_consume: float = env("OFFSIM_WEIGHT_CONSUME", 2.0, ge=0)
    # A built-in scenario or a TOML path, the SSDs it starts with, units of each watched
    # product an SSD uses a simulated day, requests in flight.
    scenario: str = env("OFFSIM_SCENARIO", "steady", min_length=1)
    population: int = env("OFFSIM_POPULATION", 0, ge=0)
    consume_per_day: float = env("OFFSIM_CONSUME_PER_DAY", 12.0, ge=0)
    max_in_flight: int = env("OFFSIM_MAX_IN_FLIGHT", 100, ge=1)
    # Readings sent over NATS or MQTT and not yet acknowledged, at most: a bound of their own,
    # as thousands a second each wait a few milliseconds for the broker (10 ms of gathering
    # first, over NATS); 2,000 is most of a second of a city of 100,000 SSDs at x60.
    max_readings_in_flight: int = env("OFFSIM_MAX_READINGS_IN_FLIGHT", 2000, ge=1)
    # As the users service's: how many products a synthetic SSD of a dry run watches.
    watched_products: int = env("OFFSIM_WATCHED_PRODUCTS", 3, ge=1)
    # How the SSDs send their readings (docs/generator.md, "Device transports"), and where
    # the MQTT broker (NATS's MQTT listener) answers for `mqtt`.
    device_transport: DeviceTransport = env("OFFSIM_DEVICE_TRANSPORT", "nats")
    mqtt_url: str = env("MQTT_URL", f"mqtt://127.0.0.1:{MQTT_DEFAULT_PORT}")
    # Whom the SSDs connect to MQTT as: the `device` user (docs/security.md); unset, anonymous.
    mqtt_user: str | None = env("MQTT_USER", None)
    mqtt_password: str | None = Field(
        None, validation_alias=AliasChoices("MQTT_PASSWORD"), repr=False
    )
    # The share of the households this generator plays, I/N or auto/N (docs/generator.md,
    # "Shards"); 0/1, the whole city, by default.
    shard: Annotated[Shard, NoDecode] = env("OFFSIM_SHARD", Shard())
    # Where a live run's --threshold reads the KPIs (the dashboard's GET /api/kpis).
    dashboard_url: str = env("DASHBOARD_URL", "http://127.0.0.1:8085")

    @field_validator("device_transport", mode="before")
    @classmethod
    def _transport(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().lower()
            if value not in DEVICE_TRANSPORTS:
                raise ValueError(f"must be one of {', '.join(DEVICE_TRANSPORTS)}")
        return value

    @field_validator("shard", mode="before")
    @classmethod
    def _shard(cls, value: object) -> object:
        return Shard.parse(value) if isinstance(value, str) else value

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        mqtt_address(value)
        return value

    @property
    def weights(self) -> dict[str, float]:
        return {
            "register": self.weight_register,
            "random_order": self.weight_random_order,
            "consume": self.weight_consume,
        }

    @property
    def mqtt_address(self) -> tuple[str, int]:
        return mqtt_address(self.mqtt_url)


def mqtt_address(url: str) -> tuple[str, int]:
    """The host and port of an mqtt://host[:port] URL (ValueError if it is not one)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("must be an mqtt://host:port URL") from None
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ValueError("must be an mqtt://host:port URL")
    return parts.hostname, port or MQTT_DEFAULT_PORT
