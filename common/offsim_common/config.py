"""Settings from the environment (12-factor), one frozen object, failing fast on bad values.

Every variable is listed, with its default, in the README's configuration table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T", int, float)


class ConfigError(ValueError):
    """An environment variable holds a value offsim cannot use."""


def _number(
    env: Mapping[str, str], name: str, default: T, minimum: T, kind: Callable[[str], T]
) -> T:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number ({kind.__name__}), got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    return _number(env, name, default, minimum, int)


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    return _number(env, name, default, minimum, float)


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
    return value


def _range(
    env: Mapping[str, str], prefix: str, default: tuple[float, float]
) -> tuple[float, float]:
    low = _float(env, f"{prefix}_MIN", default[0])
    high = _float(env, f"{prefix}_MAX", default[1])
    if high < low:
        raise ConfigError(f"{prefix}_MAX ({high}) must be >= {prefix}_MIN ({low})")
    return low, high


TRACES_EXPORTERS = ("otlp", "console", "none")
TRACES_SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
                   "parentbased_always_off", "parentbased_traceidratio")  # fmt: skip


def _exporters(env: Mapping[str, str]) -> tuple[str, ...]:
    """OTEL_TRACES_EXPORTER: a comma-separated list of otlp, console and none (the default)."""
    raw = env.get("OTEL_TRACES_EXPORTER") or "none"
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in TRACES_EXPORTERS]
    if unknown:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER must list {', '.join(TRACES_EXPORTERS)}; got {raw!r}"
        )
    return tuple(dict.fromkeys(name for name in names if name != "none"))


def _sampler(env: Mapping[str, str]) -> tuple[str, float | None]:
    name = (env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    if name not in TRACES_SAMPLERS:
        raise ConfigError(f"OTEL_TRACES_SAMPLER must be one of {', '.join(TRACES_SAMPLERS)}; "
                          f"got {name!r}")  # fmt: skip
    arg = None
    if env.get("OTEL_TRACES_SAMPLER_ARG"):
        arg = _float(env, "OTEL_TRACES_SAMPLER_ARG", 1.0)
        if arg > 1:
            raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG must be between 0 and 1, got {arg}")
    return name, arg


def _url(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if not raw:
        return None
    if not raw.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http:// or https:// URL, got {raw!r}")
    return raw.rstrip("/")


@dataclass(frozen=True)
class Settings:
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    nats_url: str = "nats://127.0.0.1:4222"
    http_port: int = 8080
    # Processes serving one HTTP service's port (SO_REUSEPORT); each is a full replica.
    http_workers: int = 1
    log_level: str = "INFO"
    # Every simulated duration is divided by this factor.
    sim_speed: float = 1.0
    # Simulated seconds, as the original: 1 to 4 minutes per stage.
    supplier_delay: tuple[float, float] = (60.0, 240.0)
    delivery_delay: tuple[float, float] = (60.0, 240.0)
    # Orders service's reconciler: an order is overdue once its stage's maximum delay plus this
    # margin has passed (simulated seconds); it looks every `reconcile_interval` real seconds.
    reconcile_margin: float = 60.0
    reconcile_interval: float = 5.0
    # Users service: how many products each new SSD watches.
    watched_products: int = 3
    # JetStream replicas of the ORDERS and USERS streams: 3 on a 3-node cluster.
    stream_replicas: int = 1
    # Generator.
    users_url: str = "http://127.0.0.1:8081"
    orders_url: str = "http://127.0.0.1:8082"
    seed: int | None = None
    tick_seconds: float = 60.0
    weights: dict[str, float] = field(
        default_factory=lambda: {"register": 1.0, "random_order": 1.0, "consume": 2.0}
    )
    # The generator's population: a built-in scenario or a TOML path, the SSDs it starts
    # with, units of each watched product an SSD uses a simulated day, requests in flight.
    scenario: str = "steady"
    population: int = 0
    consume_per_day: float = 12.0
    max_in_flight: int = 100
    # The service credential: a bearer token that acts for any user and SSD (the services
    # accept it, the generator sends it). Unset: only users' own tokens are accepted.
    service_token: str | None = field(default=None, repr=False)
    # ETL.
    off_api_url: str = "https://world.openfoodfacts.org"
    off_search_rate: float = 10.0
    # Tracing (the standard OpenTelemetry variables): no exporter means no tracing at all.
    traces_exporters: tuple[str, ...] = ()
    otel_service_name: str | None = None
    otlp_endpoint: str | None = None
    traces_sampler: str = "parentbased_always_on"
    traces_sampler_arg: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, http_port: int = 8080) -> Settings:
        env = os.environ if env is None else env
        sim_speed = _float(env, "SIM_SPEED", 1.0)
        if sim_speed <= 0:
            raise ConfigError(f"SIM_SPEED must be > 0, got {sim_speed}")
        seed = env.get("OFFSIM_SEED")
        sampler, sampler_arg = _sampler(env)
        return cls(
            database_url=env.get("DATABASE_URL") or cls.database_url,
            nats_url=env.get("NATS_URL") or cls.nats_url,
            http_port=_int(env, "HTTP_PORT", http_port, minimum=0),
            http_workers=_int(env, "OFFSIM_HTTP_WORKERS", cls.http_workers, minimum=1),
            log_level=(env.get("LOG_LEVEL") or cls.log_level).upper(),
            sim_speed=sim_speed,
            supplier_delay=_range(env, "OFFSIM_SUPPLIER_DELAY", cls.supplier_delay),
            delivery_delay=_range(env, "OFFSIM_DELIVERY_DELAY", cls.delivery_delay),
            reconcile_margin=_float(env, "OFFSIM_RECONCILE_MARGIN", cls.reconcile_margin),
            reconcile_interval=_positive(env, "OFFSIM_RECONCILE_INTERVAL", cls.reconcile_interval),
            watched_products=_int(env, "OFFSIM_WATCHED_PRODUCTS", cls.watched_products, 1),
            stream_replicas=_int(env, "OFFSIM_STREAM_REPLICAS", cls.stream_replicas, 1),
            users_url=(env.get("USERS_URL") or cls.users_url).rstrip("/"),
            orders_url=(env.get("ORDERS_URL") or cls.orders_url).rstrip("/"),
            seed=_int(env, "OFFSIM_SEED", 0) if seed else None,
            tick_seconds=_float(env, "OFFSIM_TICK_SECONDS", cls.tick_seconds),
            weights={
                "register": _float(env, "OFFSIM_WEIGHT_REGISTER", 1.0),
                "random_order": _float(env, "OFFSIM_WEIGHT_RANDOM_ORDER", 1.0),
                "consume": _float(env, "OFFSIM_WEIGHT_CONSUME", 2.0),
            },
            scenario=env.get("OFFSIM_SCENARIO") or cls.scenario,
            population=_int(env, "OFFSIM_POPULATION", cls.population),
            consume_per_day=_float(env, "OFFSIM_CONSUME_PER_DAY", cls.consume_per_day),
            max_in_flight=_int(env, "OFFSIM_MAX_IN_FLIGHT", cls.max_in_flight, 1),
            service_token=env.get("OFFSIM_SERVICE_TOKEN") or None,
            off_api_url=(env.get("OFF_API_URL") or cls.off_api_url).rstrip("/"),
            off_search_rate=_float(env, "OFF_SEARCH_RATE", cls.off_search_rate),
            traces_exporters=_exporters(env),
            otel_service_name=env.get("OTEL_SERVICE_NAME") or None,
            otlp_endpoint=_url(env, "OTEL_EXPORTER_OTLP_ENDPOINT"),
            traces_sampler=sampler,
            traces_sampler_arg=sampler_arg,
        )

    def simulated(self, seconds: float) -> float:
        """Real seconds for a simulated duration."""
        return seconds / self.sim_speed

    def overdue_after(self, delay_range: tuple[float, float]) -> float:
        """Real seconds after which a stage with these delays is overdue (the reconciler's
        threshold): its longest delay plus the margin."""
        return self.simulated(delay_range[1] + self.reconcile_margin)
