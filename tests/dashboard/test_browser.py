"""The dashboard in a real browser (headless Chromium driven by Playwright) against a running
simulation: users, orders and notifications in this process on the real NATS and Postgres.

Needs Debian's Chromium (`apt-get install chromium`); Playwright's own browser download is not
used. Set OFFSIM_CHROMIUM to use another binary, and OFFSIM_DASHBOARD_SCREENSHOT=docs/dashboard.png
to refresh the screenshot in the docs.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import aiohttp
import pytest
from offsim_dashboard.app import create_app
from offsim_generator.__main__ import run
from offsim_launcher.embedded import free_port

from tests.conftest import changed, repo_root
from tests.helpers import register

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="playwright not installed: pip install -r requirements-dev.txt"
)
expect = playwright_api.expect

CHROMIUM = Path(os.environ.get("OFFSIM_CHROMIUM", "/usr/bin/chromium"))
HAVE_CHROMIUM = CHROMIUM.exists()
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The products' OFF image addresses (from the bundled sample): offline they fail, and the page
# shows its placeholder instead.
IMAGES = {
    "3017620422003": "https://images.openfoodfacts.org/images/products/301/762/042/2003/front_en.633.400.jpg",
    "5449000000996": "https://static.openfoodfacts.org/images/products/544/900/000/0996/front_fr.467.400.jpg",
}
SLOW = 15_000  # ms: a transition takes 1 to 2 s here, a snapshot comes every 5 s
CONTROL_TOKEN = "test-operator-control-token"


@pytest.fixture
def settings(settings):
    """Slow enough that an order stays pending for 2 s and shipped for 1 s: long enough to be
    seen, short enough for a quick test."""
    return changed(
        settings, sim_speed=60.0, supplier_delay=(120.0, 120.0), delivery_delay=(60.0, 60.0)
    )


@pytest.fixture
async def browser():
    if not HAVE_CHROMIUM:
        pytest.skip(f"Chromium not found at {CHROMIUM}: apt-get install chromium")
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def dashboard_url(aiohttp_server, settings, users, orders, pool):
    app = create_app(
        changed(
            settings,
            users_url=str(users.make_url("")).rstrip("/"),
            orders_url=str(orders.make_url("")).rstrip("/"),
        )
    )
    server = await aiohttp_server(app)
    return str(server.make_url("/"))


async def place(orders, ssd_id: int, barcode: str, quantity: int) -> int:
    resp = await orders.post(
        "/api/orders", json={"ssd_id": ssd_id, "barcode": barcode, "quantity": quantity}
    )
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def add_demand(pool) -> None:
    """The SSDs' demand as the users service counts it: 30 readings and 40 units (10 short) in
    each 10-second bucket from three minutes ago to half a minute ahead (so that the last minute
    holds the same whenever the page reads it), and a day-old bucket that found stock for all.
    Three readings a second, a quarter short in the last minute, 22 % over all time."""
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO ssd_demand (bucket, readings, units_wanted, units_short)
               SELECT to_timestamp(floor(extract(epoch FROM now()) / 10) * 10)
                          + make_interval(secs => s), 30, 40, 10
               FROM generate_series(-180, 30, 10) s
               UNION ALL
               SELECT date_trunc('minute', now()) - interval '1 day', 40, 120, 0"""
        )


async def test_dashboard_follows_a_running_simulation(
    browser, dashboard_url, users, orders, notifications, products, pool, tmp_path
):
    async with pool.acquire() as conn:
        await conn.executemany(
            "UPDATE products SET image_url = $2 WHERE barcode = $1", list(IMAGES.items())
        )
    await add_demand(pool)
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Offline, as in CI: anything but this machine is refused (OFF images included).
    await page.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort())

    await page.goto(dashboard_url)
    await expect(page.locator("#live")).to_have_text("live")
    await expect(page.locator("#count-users")).to_have_text("0")
    await expect(page.locator("#count-products")).not_to_have_text("–")
    await expect(page.locator("#count-orders")).to_have_text("0")
    await expect(page.locator("#services li[data-status=ok]")).to_have_count(2)
    # The SSDs' demand, from the snapshot.
    await expect(page.locator("#readings-rate")).to_have_text("3.0")
    await expect(page.locator("#short-share-minute")).to_have_text("25.0 %")
    await expect(page.locator("#short-share")).to_have_text("22.0 %")
    await expect(page.locator("#readings-total")).to_have_text("700")
    await expect(page.locator("#units-wanted")).to_have_text("1,000")
    await expect(page.locator("#units-short")).to_have_text("220")
    # The households' KPIs: the fill rate from the same demand, no lead time before an order.
    await expect(page.locator("#kpi-fill_rate")).to_have_text("78.0 %", timeout=SLOW)
    await expect(page.locator("#kpi-lead_time_p50_s")).to_have_text("–")

    # Counts rise as people register.
    ada = await register(users, "ada@example.org")
    await expect(page.locator("#count-users")).to_have_text("1")
    await register(users, "grace@example.org", devices=2)
    await expect(page.locator("#count-users")).to_have_text("2")
    await expect(page.locator("#count-ssds")).to_have_text("3")

    # An order is shown pending, then completed.
    ssd_id = ada["devices"][0]["id"]
    body = await (await users.get(f"/api/users/{ada['id']}")).json()
    barcodes = [item["barcode"] for item in body["ssds"][0]["stock"]]
    async with pool.acquire() as conn:  # as readings that found no stock would leave it
        await conn.execute(
            """UPDATE product_ssds SET units_wanted = 12, units_short = 7
               WHERE ssd_id = $1 AND barcode = $2""",
            ssd_id,
            barcodes[1],
        )
    order_id = await place(orders, ssd_id, barcodes[0], 4)
    status = page.locator(f"#order-{order_id} .status")
    await expect(status).to_have_text("pending")
    await expect(page.locator("#count-orders")).to_have_text("1")
    await expect(page.locator("#count-pending")).to_have_text("1")
    for barcode in barcodes[1:]:
        await place(orders, ssd_id, barcode, 2)
    await expect(page.locator("#count-orders")).to_have_text("3")
    await expect(status).to_have_text("completed", timeout=SLOW)
    await expect(page.locator("#count-completed")).to_have_text("3", timeout=SLOW)
    # A snapshot taken before the last events can arrive after them and set the counts back
    # until the next one (every 5 s): the counts are right once the snapshots catch up.
    await expect(page.locator("#count-pending")).to_have_text("0", timeout=SLOW)
    await expect(page.locator("#count-shipped")).to_have_text("0", timeout=SLOW)
    # At least 2 s pending and 1 s shipped, as configured (a busy machine adds to it).
    await expect(page.locator("#avg-pending")).to_have_text(
        re.compile(r"^([2-9]|\d\d)\.\d s$"), timeout=SLOW
    )
    await expect(page.locator("#avg-shipped")).to_have_text(re.compile(r"^([1-9]|\d\d)\.\d s$"))
    # Placed to completed: at least 120 + 60 simulated seconds (and what the consumers add).
    await expect(page.locator("#kpi-lead_time_p50_s")).to_have_text(
        re.compile(r"^[3-9]\.\d min$"), timeout=SLOW
    )
    await expect(page.locator("#kpi-cancelled_share")).to_have_text("0.0 %")

    # The transitions, the throughput and the SSD's stock follow.
    transitions = page.locator(f"#transitions li[data-order='{order_id}']")
    await expect(transitions).to_have_count(3)
    await expect(page.locator("#tp-placed")).to_have_text("3", timeout=SLOW)
    await expect(page.locator("#tp-completed")).to_have_text("3", timeout=SLOW)
    card = page.locator(f"#ssd-{ssd_id}")
    await expect(card.locator(".stock")).to_have_count(3)
    # The units that found no stock, on the product they were wanted of only.
    await expect(card.locator(".short")).to_have_text(["7 short"])
    await expect(card.locator(f".stock[data-barcode='{barcodes[1]}'] .short")).to_have_count(1)
    await expect(card.locator(".badge")).to_have_count(0, timeout=SLOW)  # nothing on order
    # No image could load: each product shows its placeholder, none a broken image.
    await expect(card.locator(".thumb.placeholder")).to_have_count(3)
    await expect(page.locator("footer")).to_contain_text(
        "Product data © Open Food Facts contributors, ODbL"
    )
    assert errors == []

    screenshot = tmp_path / "dashboard.png"
    await page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    if target := os.environ.get("OFFSIM_DASHBOARD_SCREENSHOT"):
        shutil.copyfile(screenshot, repo_root() / target)


async def test_dashboard_shows_the_generator_and_changes_its_faults_with_a_control_token(
    browser, aiohttp_server, settings, users, orders, products, pool, nc
):
    port = free_port()
    urls = {"users_url": str(users.make_url("")).rstrip("/"),
            "orders_url": str(orders.make_url("")).rstrip("/")}  # fmt: skip
    server = await aiohttp_server(
        create_app(
            changed(
                settings,
                generator_url=f"http://127.0.0.1:{port}",
                control_token=CONTROL_TOKEN,
                **urls,
            )
        )
    )
    stop = asyncio.Event()
    running = asyncio.create_task(
        run(changed(settings, seed=9, tick_seconds=10**6, **urls), stop, probe_port=port)
    )
    try:
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(str(server.make_url("/")))
        await expect(page.locator("#gen-phase")).to_have_text("steady · steady", timeout=SLOW)
        await expect(page.locator("#gen-rate")).to_have_text(re.compile(r"^\d+\.\d$"))
        await expect(page.locator("#generator")).to_have_attribute("data-state", "running")

        async def generator_state() -> dict:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/api/control") as resp:
                    return await resp.json()

        status, prompt = page.locator("#gen-status"), page.locator("#gen-auth")
        stored = "() => sessionStorage.getItem('offsim.controlToken')"
        # Viewing needed no token; the first change asks for one and waits for it.
        await expect(prompt).to_be_hidden()
        await page.fill("#gen-reject", "0.5")
        await page.click("#gen-form button[type=submit]")
        await expect(prompt).to_be_visible()
        await expect(status).to_have_text("a control token is needed to change the generator")
        assert (await generator_state())["overrides"]["faults"] == {}

        # A wrong token is refused (401), forgotten, and asked for again.
        await page.fill("#gen-token", "not-the-token")
        await page.click("#gen-auth button[type=submit]")
        await expect(status).to_have_text(re.compile(r"^token refused .*enter it again$"))
        await expect(prompt).to_be_visible()
        assert await page.evaluate(stored) is None
        assert (await generator_state())["overrides"]["faults"] == {}

        # The right one sends the waiting change and is kept for the next ones.
        await page.fill("#gen-token", CONTROL_TOKEN)
        await page.click("#gen-auth button[type=submit]")
        await expect(status).to_have_text("applied")
        await expect(prompt).to_be_hidden()
        assert (await generator_state())["faults"]["reject"] == 0.5
        assert await page.evaluate(stored) == CONTROL_TOKEN

        await page.click("#gen-pause")
        await expect(page.locator("#generator")).to_have_attribute("data-state", "paused")
        await expect(prompt).to_be_hidden()
        assert (await generator_state())["paused"] is True
        assert errors == []
    finally:
        stop.set()
        await running
