from aiohttp import web

from . import handlers, kpis


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/", handlers.index)
    app.router.add_get("/api/summary", handlers.get_summary)
    app.router.add_get("/api/recent", handlers.get_recent)
    app.router.add_get("/api/ssds", handlers.list_ssds)
    app.router.add_get("/api/throughput", handlers.get_throughput)
    app.router.add_get("/api/kpis", kpis.get_kpis)
    app.router.add_get("/api/services", handlers.get_services)
    app.router.add_get("/api/events", handlers.stream_events)
    app.router.add_get("/api/generator", handlers.generator_control)
    app.router.add_put("/api/generator", handlers.generator_control)
    app.router.add_static("/static/", handlers.STATIC)
