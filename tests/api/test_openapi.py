"""The OpenAPI specs cover every route and every documented error; Swagger UI is served."""

from __future__ import annotations

import pytest
from offsim_common.openapi import documented_routes


@pytest.fixture(params=["users", "orders"])
def service_name(request) -> str:
    return request.param


async def spec_and_routes(client) -> tuple[dict, list[tuple[str, str]]]:
    resp = await client.get("/api/openapi.json")
    assert resp.status == 200
    return await resp.json(), documented_routes(client.app)


async def check_every_route_is_documented(client) -> None:
    spec, routes = await spec_and_routes(client)
    assert spec["openapi"].startswith("3.0")
    documented = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    assert set(routes) == documented, "routes missing from (or extra in) the spec"
    for method, path in routes:
        handler = next(
            r.handler for r in client.app.router.routes()
            if r.method == method and r.resource.canonical == path
        )  # fmt: skip
        declared = handler.__openapi__
        operation = spec["paths"][path][method.lower()]
        expected = {str(s) for s in (*declared.responses, *declared.errors)}
        assert set(operation["responses"]) == expected
        for status in declared.errors:
            schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}


async def test_users_spec_documents_every_route(users):
    await check_every_route_is_documented(users)
    spec, _ = await spec_and_routes(users)
    assert {"/api/register", "/api/users/{id}", "/api/ssds/{id}/consume", "/api/health"} <= set(
        spec["paths"]
    )


async def test_orders_spec_documents_every_route(orders):
    await check_every_route_is_documented(orders)
    spec, _ = await spec_and_routes(orders)
    assert {"/api/orders", "/api/orders/{id}", "/api/products", "/api/products/{barcode}"} <= set(
        spec["paths"]
    )
    body = spec["paths"]["/api/orders"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/OrderRequest"}
    quantity = spec["components"]["schemas"]["OrderRequest"]["properties"]["quantity"]
    assert (quantity["minimum"], quantity["maximum"]) == (1, 100)


async def test_swagger_ui_is_served_locally(users):
    page = await users.get("/api/docs")
    assert page.status == 200
    html = await page.text()
    assert "/api/openapi.json" in html and "https://" not in html
    asset = await users.get("/api/docs/static/swagger-ui-bundle.js")
    assert asset.status == 200
    assert len(await asset.read()) > 100_000
