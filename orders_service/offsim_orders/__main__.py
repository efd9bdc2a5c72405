"""offsim-orders: run the orders service on HTTP_PORT (default 8082)."""

from offsim_common import service

from .app import create_app
from .settings import OrdersSettings


def main() -> None:
    service.main("orders", OrdersSettings, create_app)


if __name__ == "__main__":
    main()
