"""Settings from the environment (12-factor): a shared base that every member's own settings
extend, validated by pydantic, failing fast with a message that names the variable.

Each member declares only what it reads (`offsim_orders.settings.OrdersSettings`, ...), so a
typo in the generator's variables cannot stop the orders service. Every variable is listed,
with its default, in the README's configuration table.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Any, Self
from urllib.parse import quote

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

TRACES_EXPORTERS = ("otlp", "console", "none")
TRACES_SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
                   "parentbased_always_off", "parentbased_traceidratio")  # fmt: skip

# The environment `from_env` reads, when it is given one (tests, the launcher's children).
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("environ", default=None)


class ConfigError(ValueError):
    """An environment variable holds a value offsim cannot use."""


def env(name: str, default: Any, **constraints: Any) -> Any:
    """A field read from the variable `name` (also settable by its field name in code)."""
    return Field(default, validation_alias=AliasChoices(name), **constraints)


class _GivenEnviron(EnvSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name: value for name, value in self._environ.items() if value != ""}


class EnvSettings(BaseSettings):
    """The mechanics: frozen, unknown variables ignored, an empty variable means its default."""

    model_config = SettingsConfigDict(
        frozen=True,
        case_sensitive=True,
        env_ignore_empty=True,
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
    )

    log_level: str = env("LOG_LEVEL", "INFO")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        environ = _ENVIRON.get()
        if environ is not None:
            return init_settings, _GivenEnviron(settings_cls, environ)
        return init_settings, env_settings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """The settings of `environ` (the process's environment by default); `overrides`
        (by field name) win over both. A bad value raises ConfigError naming its variable."""
        with _reading(with_secret_files(environ if environ is not None else os.environ)):
            try:
                return cls(**overrides)
            except ValidationError as exc:
                raise ConfigError(_describe(exc)) from None

    @classmethod
    def variables(cls) -> set[str]:
        """The names of the environment variables these settings read."""
        return {
            name
            for field in cls.model_fields.values()
            if isinstance(field.validation_alias, AliasChoices)
            for name in field.validation_alias.choices
            if isinstance(name, str)
        }

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()


# Secrets may come as files (compose's and Kubernetes' secrets are mounted as files): NAME_FILE
# names a file whose content (without its final newline) is NAME's value. NAME itself wins.
SECRET_VARIABLES = ("NATS_PASSWORD", "DATABASE_PASSWORD", "MQTT_PASSWORD",
                    "OFFSIM_SERVICE_TOKEN", "OFFSIM_CONTROL_TOKEN")  # fmt: skip


def with_secret_files(environ: Mapping[str, str]) -> Mapping[str, str]:
    """`environ` with each NAME_FILE of SECRET_VARIABLES read into NAME (unless NAME is set)."""
    found = {}
    for name in SECRET_VARIABLES:
        path = environ.get(f"{name}_FILE", "")
        if path and not environ.get(name):
            try:
                with open(path, encoding="utf-8") as secret:
                    found[name] = secret.read().rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    return {**environ, **found} if found else environ


@contextmanager
def _reading(environ: Mapping[str, str]) -> Iterator[None]:
    token = _ENVIRON.set(environ)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        name = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        got = f", got {error['input']!r}" if name and not isinstance(error["input"], dict) else ""
        problems.append(f"{name}: {message}{got}" if name else message)
    return "; ".join(problems)


# A duration: seconds (`3600`), or numbers each with its unit, s, m, h or d (`12h`, `1d12h`).
_SECONDS = re.compile(r"\d+(?:\.\d+)?")
_WITH_UNITS = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> float:
    """Seconds of a duration given as `7d`, `12h`, `30m`, `90s`, `1d12h` or plain seconds
    (`3600`, `0`); a number passes as seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and _SECONDS.fullmatch(text := value.strip().lower()):
        seconds = float(text)
    elif isinstance(value, str) and _WITH_UNITS.fullmatch(text):
        seconds = sum(float(n) * _UNIT_S[unit] for n, unit in _PART.findall(text))
    else:
        raise ValueError("must be a duration: seconds, or a number with a unit s, m, h or d "
                         "(90s, 30m, 12h, 7d, 1d12h)")  # fmt: skip
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("must be a duration of 0 seconds or more")
    return seconds


# Seconds, read from a duration (parse_duration).
Duration = Annotated[float, BeforeValidator(parse_duration)]


def nats_servers(url: str) -> list[str]:
    """NATS_URL's servers: one URL, or several separated by commas (the nodes of a cluster).
    The client connects to one of them at random and, when it is lost, to another; once
    connected, the cluster also tells it of the nodes it was not given."""
    return [server.strip() for server in url.split(",") if server.strip()]


def _http_url(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


class DatabaseSettings(EnvSettings):
    # The component's own role (docs/security.md); DATABASE_PASSWORD, when set, is its password
    # (in the URL's place: kept out of the URL, which is printed and logged).
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/postgres",
        validation_alias=AliasChoices("DATABASE_URL"),
        repr=False,
    )
    database_password: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_PASSWORD"), repr=False
    )

    @model_validator(mode="after")
    def _password_in_url(self) -> Self:
        """The DSN every connection uses: DATABASE_URL with DATABASE_PASSWORD in it."""
        if self.database_password:
            object.__setattr__(
                self, "database_url", dsn_with_password(self.database_url, self.database_password)
            )
        return self


def dsn_with_password(dsn: str, password: str) -> str:
    """`dsn` (postgresql://user@host/db) with `password` for its user (URL-quoted)."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        raise ValueError("DATABASE_URL must name its user (postgresql://user@host/db) when "
                         "DATABASE_PASSWORD is set")  # fmt: skip
    userinfo, _, hostpart = rest.partition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:{quote(password, safe='')}@{hostpart}"


class ServiceSettings(DatabaseSettings):
    """What every long-running member reads: its servers, its port, simulated time, the service
    credential and tracing."""

    # One server, or the nodes of a cluster separated by commas (bus.servers).
    nats_url: str = env("NATS_URL", "nats://127.0.0.1:4222")
    # The component's NATS user (docs/security.md); unset: an anonymous connection, which only
    # a server without authorization takes.
    nats_user: str | None = env("NATS_USER", None)
    nats_password: str | None = Field(
        None, validation_alias=AliasChoices("NATS_PASSWORD"), repr=False
    )
    http_port: int = env("HTTP_PORT", 8080, ge=0, le=65535)
    # Every simulated duration is divided by this factor.
    sim_speed: float = env("SIM_SPEED", 1.0, gt=0)
    # JetStream replicas of the ORDERS and USERS streams: 3 on a 3-node cluster.
    stream_replicas: int = env("OFFSIM_STREAM_REPLICAS", 1, ge=1)
    seed: int | None = env("OFFSIM_SEED", None)
    # How long a caught-up durable consumer waits before its next fetch, so that messages are
    # applied in batches (bus.ConsumerSpec.linger_s); 0 fetches again at once.
    consumer_linger_ms: int = env("OFFSIM_CONSUMER_LINGER_MS", 50, ge=0, le=5000)
    # The service credential: a bearer token that acts for any user and SSD (the services
    # accept it, the generator sends it). Unset: only users' own tokens are accepted.
    service_token: str | None = Field(
        None, validation_alias=AliasChoices("OFFSIM_SERVICE_TOKEN"), repr=False
    )
    # Tracing (the standard OpenTelemetry variables): no exporter means no tracing at all.
    traces_exporters: Annotated[tuple[str, ...], NoDecode] = env("OTEL_TRACES_EXPORTER", ())
    otel_service_name: str | None = env("OTEL_SERVICE_NAME", None)
    otlp_endpoint: str | None = env("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    traces_sampler: str = env("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    traces_sampler_arg: float | None = env("OTEL_TRACES_SAMPLER_ARG", None, ge=0, le=1)

    @field_validator("nats_url")
    @classmethod
    def _nats_url(cls, value: str) -> str:
        """nats:// or tls:// URLs (or ws://, wss://, not mixed with those), comma-separated."""
        found = nats_servers(value)
        if not found:
            raise ValueError("must name at least one NATS server")
        schemes = {server.partition("://")[0] if "://" in server else "nats" for server in found}
        if not (schemes <= {"nats", "tls"} or schemes <= {"ws", "wss"}):
            raise ValueError("must be nats:// or tls:// URLs (or ws:// and wss://, not mixed)")
        return ",".join(found)

    @field_validator("traces_exporters", mode="before")
    @classmethod
    def _exporters(cls, value: Any) -> tuple[str, ...]:
        """A comma-separated list of otlp, console and none (the default)."""
        names = [n.strip().lower() for n in value.split(",")] if isinstance(value, str) else value
        names = [name for name in names if name]
        if unknown := [name for name in names if name not in TRACES_EXPORTERS]:
            raise ValueError(f"must list {', '.join(TRACES_EXPORTERS)}; unknown: {unknown}")
        return tuple(dict.fromkeys(name for name in names if name != "none"))

    @field_validator("traces_sampler")
    @classmethod
    def _sampler(cls, value: str) -> str:
        if value.strip().lower() not in TRACES_SAMPLERS:
            raise ValueError(f"must be one of {', '.join(TRACES_SAMPLERS)}")
        return value.strip().lower()

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return _http_url(value)

    def simulated(self, seconds: float) -> float:
        """Real seconds for a simulated duration."""
        return seconds / self.sim_speed


class DeliverySettings(ServiceSettings):
    """The supplier's and the courier's delays, in simulated seconds (as the original: 1 to 4
    minutes per stage): notifications waits them, the orders service's reconciler and the
    generator's dry run reckon with them."""

    supplier_delay_min: float = env("OFFSIM_SUPPLIER_DELAY_MIN", 60.0, ge=0)
    supplier_delay_max: float = env("OFFSIM_SUPPLIER_DELAY_MAX", 240.0, ge=0)
    delivery_delay_min: float = env("OFFSIM_DELIVERY_DELAY_MIN", 60.0, ge=0)
    delivery_delay_max: float = env("OFFSIM_DELIVERY_DELAY_MAX", 240.0, ge=0)

    @model_validator(mode="after")
    def _ranges(self) -> Self:
        for stage in ("supplier", "delivery"):
            low, high = getattr(self, f"{stage}_delay_min"), getattr(self, f"{stage}_delay_max")
            if high < low:
                name = f"OFFSIM_{stage.upper()}_DELAY"
                raise ValueError(f"{name}_MAX ({high}) must be >= {name}_MIN ({low})")
        return self

    @property
    def supplier_delay(self) -> tuple[float, float]:
        return self.supplier_delay_min, self.supplier_delay_max

    @property
    def delivery_delay(self) -> tuple[float, float]:
        return self.delivery_delay_min, self.delivery_delay_max


class GeneratorUrl(EnvSettings):
    """Where the generator's control API answers, for the dashboard and the live feed."""

    generator_url: str = env("GENERATOR_URL", "http://127.0.0.1:8084")

    @field_validator("generator_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value) or value


class ApiUrls(EnvSettings):
    """Where the users and orders services answer, for the members that call them."""

    users_url: str = env("USERS_URL", "http://127.0.0.1:8081")
    orders_url: str = env("ORDERS_URL", "http://127.0.0.1:8082")

    @field_validator("users_url", "orders_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value) or value
