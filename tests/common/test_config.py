"""Settings from the environment: defaults that work locally, clear errors otherwise."""

from __future__ import annotations

import pytest
from offsim_common.config import ConfigError, Settings


def test_settings_defaults_work_locally():
    settings = Settings.from_env({}, http_port=8081)
    assert settings.http_port == 8081
    assert settings.sim_speed == 1.0
    assert settings.supplier_delay == (60.0, 240.0)
    assert settings.simulated(60) == 60


def test_settings_read_the_environment():
    settings = Settings.from_env(
        {
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
        }
    )
    assert settings.database_url == "postgresql://db/offsim"
    assert settings.nats_url == "nats://bus:4222"
    assert settings.http_port == 9000
    assert settings.simulated(60) == 0.5
    assert settings.supplier_delay == (10.0, 20.0)
    assert settings.weights["consume"] == 0.0
    assert settings.overdue_after(settings.supplier_delay) == 0.5  # (20 + 40) / 120
    assert settings.reconcile_interval == 0.5
    assert settings.users_url == "http://users:8081"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"SIM_SPEED": "fast"}, "SIM_SPEED"),
        ({"SIM_SPEED": "0"}, "SIM_SPEED"),
        ({"HTTP_PORT": "-1"}, "HTTP_PORT"),
        ({"OFFSIM_RECONCILE_INTERVAL": "0"}, "OFFSIM_RECONCILE_INTERVAL"),
        ({"OFFSIM_DELIVERY_DELAY_MIN": "50", "OFFSIM_DELIVERY_DELAY_MAX": "5"}, "DELAY_MAX"),
    ],
)
def test_settings_bad_values_fail_fast_naming_the_variable(env, names):
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(env)
