"""offsim-orders: run the orders service on HTTP_PORT (default 8082)."""

from offsim_common.web import run

from .app import create_app


def main() -> None:
    run(create_app, "orders", default_port=8082)


if __name__ == "__main__":
    main()
