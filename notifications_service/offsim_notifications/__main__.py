"""offsim-notifications: the supplier and courier, as JetStream consumers; `/api/health`,
`/metrics` and `/api/faults` (the faults it applies) on HTTP_PORT (default 8083)."""

from offsim_common import service

from .app import create_app
from .settings import NotificationsSettings


def main() -> None:
    service.main("notifications", NotificationsSettings, create_app)


if __name__ == "__main__":
    main()
