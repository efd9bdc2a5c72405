"""offsim-users: run the users service on HTTP_PORT (default 8081)."""

from offsim_common import service

from .app import create_app
from .settings import UsersSettings


def main() -> None:
    service.main("users", UsersSettings, create_app)


if __name__ == "__main__":
    main()
