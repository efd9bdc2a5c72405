"""offsim-users: run the users service on HTTP_PORT (default 8081)."""

from offsim_common.web import run

from .app import create_app


def main() -> None:
    run(create_app, "users", default_port=8081)


if __name__ == "__main__":
    main()
