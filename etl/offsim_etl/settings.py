"""The ETL's settings: the database it loads, and the OFF search API it may read."""

from __future__ import annotations

from offsim_common.settings import DatabaseSettings, env
from pydantic import field_validator


class EtlSettings(DatabaseSettings):
    off_api_url: str = env("OFF_API_URL", "https://world.openfoodfacts.org")
    # Search requests a minute: OFF asks for at most 10 (its API's rate limits).
    off_search_rate: float = env("OFF_SEARCH_RATE", 10.0, ge=0)

    @field_validator("off_api_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")
