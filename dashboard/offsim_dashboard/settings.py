"""The dashboard's settings: the shared ones, where the services it watches answer, and the
operator token that may change the generator through it."""

from __future__ import annotations

from offsim_common.settings import ApiUrls, GeneratorUrl, ServiceSettings, env
from pydantic import AliasChoices, Field


class DashboardSettings(ServiceSettings, ApiUrls, GeneratorUrl):
    http_port: int = env("HTTP_PORT", 8085, ge=0, le=65535)
    # A bearer token for the generator's controls only (control_auth.py): an operator can be
    # given it without the service credential, which acts for every user and SSD. Also read
    # from OFFSIM_CONTROL_TOKEN_FILE (settings.SECRET_VARIABLES).
    control_token: str | None = Field(
        None, validation_alias=AliasChoices("OFFSIM_CONTROL_TOKEN"), repr=False
    )
