"""The dashboard's settings: the shared ones, and where the services it watches answer."""

from __future__ import annotations

from offsim_common.settings import ApiUrls, GeneratorUrl, ServiceSettings, env


class DashboardSettings(ServiceSettings, ApiUrls, GeneratorUrl):
    http_port: int = env("HTTP_PORT", 8085, ge=0, le=65535)
