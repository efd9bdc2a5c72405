"""GET /api/health: 200 only when both the database and NATS answer."""

from __future__ import annotations

from offsim_common.app_keys import NC, POOL


async def check_health_follows_dependencies(client) -> None:
    resp = await client.get("/api/health")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"

    await client.app[NC].close()
    resp = await client.get("/api/health")
    assert resp.status == 503
    assert set((await resp.json())["details"]) == {"nats"}

    await client.app[POOL].close()
    resp = await client.get("/api/health")
    assert resp.status == 503
    assert set((await resp.json())["details"]) == {"database", "nats"}


async def test_users_health_reports_each_dependency(users):
    await check_health_follows_dependencies(users)


async def test_orders_health_reports_each_dependency(orders):
    await check_health_follows_dependencies(orders)
