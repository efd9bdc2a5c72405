from aiohttp import web

from . import handlers


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/orders", handlers.place_order)
    app.router.add_get("/api/orders", handlers.list_orders)
    app.router.add_get("/api/orders/{id}", handlers.get_order)
    app.router.add_get("/api/products", handlers.list_products)
    app.router.add_get("/api/products/{barcode}", handlers.get_product)
