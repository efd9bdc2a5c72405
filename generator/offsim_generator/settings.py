"""The generator's settings: the shared ones, where the services answer, the delays its dry run
plays, and the population's own."""

from __future__ import annotations

from offsim_common.settings import ApiUrls, DeliverySettings, env


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
    # As the users service's: how many products a synthetic SSD of a dry run watches.
    watched_products: int = env("OFFSIM_WATCHED_PRODUCTS", 3, ge=1)

    @property
    def weights(self) -> dict[str, float]:
        return {
            "register": self.weight_register,
            "random_order": self.weight_random_order,
            "consume": self.weight_consume,
        }
