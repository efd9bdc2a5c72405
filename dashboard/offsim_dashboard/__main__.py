"""offsim-dashboard: serve the live dashboard on HTTP_PORT (default 8085)."""

from offsim_common.web import run

from .app import create_app


def main() -> None:
    run(create_app, "dashboard", default_port=8085)


if __name__ == "__main__":
    main()
