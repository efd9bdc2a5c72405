from aiohttp import web

from . import handlers


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/register", handlers.register)
    app.router.add_post("/api/synthetic-users", handlers.register_synthetic_users)
    app.router.add_get("/api/users/{id}", handlers.get_user)
    app.router.add_post("/api/ssds/{id}/consume", handlers.consume)
