"""--source api against a local server replaying real recorded OFF search responses.

The server maps page k of one synthetic query to the k-th recorded file in `RECORDED` and serves
its bytes unchanged; failures are scripted per page. The three files come from different real
searches (see pages/README.md), so their `count`/`page_size` differ, as real pages of a changing
result set can: page-009.json (count 32, page_size "20") served as page 3 is where the stop rule
(page * page_size >= count) ends the crawl, so no synthetic page is ever needed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from offsim_etl import ExtractError, run_etl
from offsim_etl.extract_api import FIELDS
from offsim_etl.settings import EtlSettings

PAGES = Path(__file__).parent / "pages"
RECORDED = {1: "page-010.json", 2: "page-002.json", 3: "page-009.json"}
# 150 + 20 + 20 recorded products; 2 have no name at all.
READ, KEPT = 190, 188


@dataclass
class Seen:
    page: int
    query: dict[str, str]
    user_agent: str
    status: int
    at: float


@dataclass
class FakeOff:
    """OFF's /api/v2/search, replaying recorded pages, with scripted failures."""

    bodies: dict[int, bytes] = field(default_factory=dict)
    # page -> statuses to answer, one per request, before the real page.
    failures: dict[int, list[int]] = field(default_factory=dict)
    # pages that answer 500 until further notice.
    down: set[int] = field(default_factory=set)
    retry_after: str = "0"
    log: list[Seen] = field(default_factory=list)

    async def search(self, request: web.Request) -> web.Response:
        page = int(request.query["page"])
        script = self.failures.get(page) or []
        status = 500 if page in self.down else script.pop(0) if script else 200
        self.log.append(
            Seen(page, dict(request.query), request.headers["User-Agent"], status, time.monotonic())
        )
        if status == 429:
            return web.json_response(
                {"error": "rate limited"}, status=429, headers={"Retry-After": self.retry_after}
            )
        if status != 200:
            return web.json_response({"error": "server error"}, status=status)
        return web.Response(body=self.bodies[page], content_type="application/json")

    def pages_served(self) -> list[int]:
        return [seen.page for seen in self.log if seen.status == 200]


ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


@pytest.fixture
async def off(aiohttp_server: ServerFactory) -> tuple[FakeOff, str]:
    fake = FakeOff(bodies={page: (PAGES / name).read_bytes() for page, name in RECORDED.items()})
    app = web.Application()
    app.router.add_get("/api/v2/search", fake.search)
    server = await aiohttp_server(app)
    return fake, str(server.make_url("")).rstrip("/")


def api_settings(settings: EtlSettings, base_url: str) -> EtlSettings:
    return settings.model_copy(update={"off_api_url": base_url})


async def test_api_retries_429_and_500_then_loads_every_page(
    db: asyncpg.Pool, etl_settings: EtlSettings, off: tuple[FakeOff, str]
) -> None:
    fake, url = off
    fake.failures[2] = [429, 500]

    summary = await run_etl(
        api_settings(etl_settings, url),
        "api",
        page_size=20,
        query="coffees",
        progress=False,
        backoff=0,
    )

    async with db.acquire() as conn:
        rows = await conn.fetchval("SELECT count(*) FROM products")
        positions = await conn.fetchval("SELECT count(*) FROM etl_positions")
    assert [(seen.page, seen.status) for seen in fake.log] == [
        (1, 200),
        (2, 429),
        (2, 500),
        (2, 200),
        (3, 200),
    ]
    assert (summary.read, summary.kept, rows) == (READ, KEPT, KEPT)
    assert summary.rejected == {"no name": 2}
    assert (summary.pages, summary.start_page, summary.finished) == (3, 1, True)
    assert positions == 0  # finished: the next run starts over


async def test_api_sends_fields_paging_and_user_agent(
    db: asyncpg.Pool, etl_settings: EtlSettings, off: tuple[FakeOff, str]
) -> None:
    fake, url = off

    await run_etl(
        api_settings(etl_settings, url),
        "api",
        page_size=20,
        query="brands_tags=nestle&countries_tags_en=france",
        progress=False,
        backoff=0,
    )

    first = fake.log[0]
    assert first.query == {
        "brands_tags": "nestle",
        "countries_tags_en": "france",
        "sort_by": "created_t",
        "fields": ",".join(FIELDS),
        "page_size": "20",
        "page": "1",
    }
    assert first.user_agent.startswith("offsim-etl/")
    assert "https://github.com/offsim" in first.user_agent
    # Stopped at the last page: nothing was asked after page 3.
    assert [seen.page for seen in fake.log] == [1, 2, 3]


async def test_api_resumes_after_the_last_stored_page(
    db: asyncpg.Pool, etl_settings: EtlSettings, off: tuple[FakeOff, str]
) -> None:
    fake, url = off
    settings = api_settings(etl_settings, url)
    fake.down.add(2)

    with pytest.raises(ExtractError, match=r"page 2 at .* failed: HTTP 500") as failed:
        await run_etl(
            settings, "api", page_size=20, query="coffees", progress=False, retries=2, backoff=0
        )

    async with db.acquire() as conn:
        position = await conn.fetchrow("SELECT source, next_page FROM etl_positions")
        rows_after_crash = await conn.fetchval("SELECT count(*) FROM products")
    assert fake.log[0].page == 1 and [seen.page for seen in fake.log[1:]] == [2, 2, 2]
    assert position["next_page"] == 2
    assert position["source"].endswith("?categories_tags_en=coffees&page_size=20&sort_by=created_t")
    assert failed.value.summary is not None
    assert rows_after_crash == failed.value.summary.kept == 149

    fake.down.clear()
    fake.log.clear()
    summary = await run_etl(
        settings, "api", page_size=20, query="coffees", progress=False, backoff=0
    )

    async with db.acquire() as conn:
        rows = await conn.fetchval("SELECT count(*) FROM products")
        positions = await conn.fetchval("SELECT count(*) FROM etl_positions")
    assert fake.pages_served() == [2, 3]
    assert (summary.start_page, summary.pages, summary.read) == (2, 2, 40)
    assert rows == KEPT
    assert positions == 0


async def test_api_max_pages_keeps_the_position_and_restart_ignores_it(
    db: asyncpg.Pool, etl_settings: EtlSettings, off: tuple[FakeOff, str]
) -> None:
    fake, url = off
    settings = api_settings(etl_settings, url)

    first = await run_etl(settings, "api", page_size=20, max_pages=1, progress=False)
    second = await run_etl(settings, "api", page_size=20, max_pages=1, progress=False)
    again = await run_etl(settings, "api", page_size=20, max_pages=1, restart=True, progress=False)

    assert fake.pages_served() == [1, 2, 1]
    assert (first.finished, second.start_page, again.start_page) == (False, 2, 1)
    assert (again.inserted, again.unchanged) == (0, 149)
    async with db.acquire() as conn:
        assert await conn.fetchval("SELECT next_page FROM etl_positions") == 2


async def test_api_unreachable_server_fails_with_one_line(
    db: asyncpg.Pool, etl_settings: EtlSettings
) -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    settings = api_settings(etl_settings, "http://127.0.0.1:1")

    with pytest.raises(
        ExtractError, match=r"page 1 at http://127.0.0.1:1 failed: .*refused"
    ) as failed:
        await run_etl(settings, "api", progress=False, retries=1, backoff=0)

    assert "\n" not in str(failed.value)


async def test_api_spaces_requests_by_off_search_rate(
    db: asyncpg.Pool, etl_settings: EtlSettings, off: tuple[FakeOff, str]
) -> None:
    fake, url = off
    settings = api_settings(etl_settings, url).model_copy(
        update={"off_search_rate": 200.0}
    )  # one per 0.3 s

    await run_etl(settings, "api", page_size=20, progress=False)

    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(fake.log)]
    # Arrival times: 50 ms of slack for a first request that also had to connect.
    assert len(gaps) == 2 and min(gaps) >= 0.25


async def test_api_honours_retry_after(
    db: asyncpg.Pool, etl_settings: EtlSettings, off: tuple[FakeOff, str]
) -> None:
    fake, url = off
    fake.failures[1] = [429]
    fake.retry_after = "1"

    await run_etl(
        api_settings(etl_settings, url), "api", page_size=20, max_pages=1, progress=False, backoff=0
    )

    assert [seen.status for seen in fake.log] == [429, 200]
    assert fake.log[1].at - fake.log[0].at >= 0.95
