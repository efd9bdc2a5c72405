"""offsim-dashboard: serve the live dashboard on HTTP_PORT (default 8085)."""

from offsim_common import service

from .app import create_app
from .settings import DashboardSettings


def main() -> None:
    service.main("dashboard", DashboardSettings, create_app)


if __name__ == "__main__":
    main()
