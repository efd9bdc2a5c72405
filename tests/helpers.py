"""Small helpers shared by the tests."""

from __future__ import annotations

import itertools

from prometheus_client.parser import text_string_to_metric_families

_macs = itertools.count(1)


def registration(email: str, devices: int = 1) -> dict:
    """A valid POST /api/register body with fresh MAC addresses."""
    macs = [next(_macs) for _ in range(devices)]
    return {
        "user": {
            "first_name": "Test",
            "last_name": "User",
            "email": email,
            "password": "long enough password",
        },
        "devices": [{"mac_address": f"02:00:00:00:{n // 256:02x}:{n % 256:02x}"} for n in macs],
    }


async def register(users, email: str = "test@example.org", devices: int = 1) -> dict:
    resp = await users.post("/api/register", json=registration(email, devices))
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def stored_orders(pool, ssd_id: int, barcodes: list[str]) -> list[int]:
    """Orders of one unit each, stored as placed and announced, without the API: their ids."""
    async with pool.acquire() as conn:
        return [
            await conn.fetchval(
                """INSERT INTO product_orders (ssd_id, barcode, quantity, published_at)
                   VALUES ($1, $2, 1, now()) RETURNING id""",
                ssd_id,
                barcode,
            )
            for barcode in barcodes
        ]


def metric(text: str, sample: str, **labels: str) -> float:
    """A sample's value on a /metrics page, summed over the series whose labels include
    `labels` (0 when there is none)."""
    return sum(
        found.value
        for family in text_string_to_metric_families(text)
        for found in family.samples
        if found.name == sample and labels.items() <= found.labels.items()
    )
