"""Settings from the environment: each member's own on a shared base, defaults that work
locally, clear errors naming the variable otherwise."""

from __future__ import annotations

import pytest
from offsim_common.settings import ConfigError, ServiceSettings, nats_servers
from offsim_etl.settings import EtlSettings
from offsim_generator.settings import GeneratorSettings
from offsim_notifications.settings import NotificationsSettings
from offsim_orders.settings import OrdersSettings
from offsim_users.settings import UsersSettings


def test_settings_defaults_work_locally():
    assert UsersSettings.from_env({}).http_port == 8081
    assert OrdersSettings.from_env({}).http_port == 8082
    assert NotificationsSettings.from_env({}).http_port == 8083
    assert GeneratorSettings.from_env({}).http_port == 8084
    settings = OrdersSettings.from_env({})
    assert settings.sim_speed == 1.0
    assert settings.supplier_delay == (60.0, 240.0)
    assert settings.simulated(60) == 60
    assert settings.database_url.startswith("postgresql://")


def test_settings_read_the_environment():
    env = {
        "DATABASE_URL": "postgresql://db/offsim",
        "NATS_URL": "nats://bus:4222",
        "HTTP_PORT": "9000",
        "SIM_SPEED": "120",
        "OFFSIM_SUPPLIER_DELAY_MIN": "10",
        "OFFSIM_SUPPLIER_DELAY_MAX": "20",
        "OFFSIM_WEIGHT_CONSUME": "0",
        "OFFSIM_RECONCILE_MARGIN": "40",
        "OFFSIM_RECONCILE_INTERVAL": "0.5",
        "USERS_URL": "http://users:8081/",
        "LOG_LEVEL": "debug",
    }
    orders = OrdersSettings.from_env(env)
    assert orders.database_url == "postgresql://db/offsim"
    assert orders.nats_url == "nats://bus:4222"
    assert orders.http_port == 9000
    assert orders.log_level == "DEBUG"
    assert orders.simulated(60) == 0.5
    assert orders.supplier_delay == (10.0, 20.0)
    assert orders.overdue_after(orders.supplier_delay) == 0.5  # (20 + 40) / 120
    assert orders.reconcile_interval == 0.5
    generator = GeneratorSettings.from_env(env)
    assert generator.weights["consume"] == 0.0
    assert generator.users_url == "http://users:8081"


def test_flags_win_over_the_environment():
    settings = GeneratorSettings.from_env({"OFFSIM_SEED": "1"}, seed=2, population=5)
    assert (settings.seed, settings.population) == (2, 5)


def test_an_empty_variable_means_its_default():
    assert UsersSettings.from_env({"HTTP_PORT": "", "SIM_SPEED": ""}).http_port == 8081


@pytest.mark.parametrize(
    ("settings", "env", "names"),
    [
        (ServiceSettings, {"SIM_SPEED": "fast"}, "SIM_SPEED"),
        (ServiceSettings, {"SIM_SPEED": "0"}, "SIM_SPEED"),
        (ServiceSettings, {"HTTP_PORT": "-1"}, "HTTP_PORT"),
        (OrdersSettings, {"OFFSIM_RECONCILE_INTERVAL": "0"}, "OFFSIM_RECONCILE_INTERVAL"),
        (
            NotificationsSettings,
            {"OFFSIM_DELIVERY_DELAY_MIN": "50", "OFFSIM_DELIVERY_DELAY_MAX": "5"},
            "OFFSIM_DELIVERY_DELAY_MAX",
        ),
        (GeneratorSettings, {"OFFSIM_MAX_IN_FLIGHT": "0"}, "OFFSIM_MAX_IN_FLIGHT"),
        (UsersSettings, {"OFFSIM_WATCHED_PRODUCTS": "many"}, "OFFSIM_WATCHED_PRODUCTS"),
        (OrdersSettings, {"OFFSIM_ORDER_RETENTION": "a week"}, "OFFSIM_ORDER_RETENTION"),
        (OrdersSettings, {"OFFSIM_ORDER_RETENTION": "-1"}, "OFFSIM_ORDER_RETENTION"),
        (OrdersSettings, {"OFFSIM_ORDER_RETENTION": "2w"}, "OFFSIM_ORDER_RETENTION"),
        (OrdersSettings, {"OFFSIM_ORDER_RETENTION": "1h 30m"}, "OFFSIM_ORDER_RETENTION"),
        (EtlSettings, {"OFF_SEARCH_RATE": "-1"}, "OFF_SEARCH_RATE"),
    ],
)
def test_settings_bad_values_fail_fast_naming_the_variable(settings, env, names):
    with pytest.raises(ConfigError, match=names):
        settings.from_env(env)


def test_a_member_ignores_the_variables_of_the_others():
    """A typo in the generator's or the ETL's variables cannot stop a service."""
    broken = {"OFFSIM_WEIGHT_REGISTER": "lots", "OFF_SEARCH_RATE": "fast",
              "OFFSIM_RECONCILE_INTERVAL": "never"}  # fmt: skip
    assert UsersSettings.from_env(broken).watched_products == 3
    assert NotificationsSettings.from_env(broken).supplier_delay == (60.0, 240.0)
    with pytest.raises(ConfigError, match="OFFSIM_WEIGHT_REGISTER"):
        GeneratorSettings.from_env(broken)


def test_nats_url_may_list_the_nodes_of_a_cluster():
    env = {"NATS_URL": " nats://n1:4222, nats://n2:4222,,tls://n3:4222 "}
    assert OrdersSettings.from_env(env).nats_url == "nats://n1:4222,nats://n2:4222,tls://n3:4222"
    assert nats_servers("nats://n1:4222,n2:4222") == ["nats://n1:4222", "n2:4222"]
    with pytest.raises(ConfigError, match="NATS_URL"):
        OrdersSettings.from_env({"NATS_URL": "nats://n1:4222,ws://n2:8080"})
    with pytest.raises(ConfigError, match="NATS_URL"):
        OrdersSettings.from_env({"NATS_URL": "http://n1:4222"})


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("7d", 604800), ("12h", 43200), ("30m", 1800), ("90s", 90), ("3600", 3600), ("0", 0),
     ("1d12h", 129600), ("1.5h", 5400), (" 2D ", 172800)],
)  # fmt: skip
def test_the_order_retention_is_a_duration(value, seconds):
    assert OrdersSettings.from_env({"OFFSIM_ORDER_RETENTION": value}).order_retention == seconds


def test_the_order_retention_is_a_week_unless_told():
    assert OrdersSettings.from_env({}).order_retention == 7 * 86400
