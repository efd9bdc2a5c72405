"""Page through OFF's search API (`GET /api/v2/search`) the way OFF asks API users to.

Fixes the original's flaws: only the fields we map are requested (`fields=`), the page size
parameter is `page_size`, every request names the app in its User-Agent, requests are spaced to
OFF_SEARCH_RATE per minute, and 429/5xx/timeouts are retried with back-off (honouring
Retry-After) by urllib3 before a page is given up. Runs synchronously: the pipeline calls it
through `asyncio.to_thread`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from importlib import metadata
from typing import Any
from urllib.parse import parse_qsl, urlencode

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .batch import RawBatch
from .errors import ExtractError

log = logging.getLogger(__name__)

SEARCH_PATH = "/api/v2/search"
# The fields `transform` reads from a search result (the API computes `image_url` itself).
FIELDS = (
    "code",
    "product_name",
    "product_name_en",
    "generic_name",
    "quantity",
    "image_url",
    "nutriments",
    "nova_group",
    "nutriscore_score",
    "nutriscore_grade",
    "nutrition_grades",
    "nutrient_levels",
    "brands_tags",
    "categories_tags",
)
# Only --strict looks at states, so only --strict pays for them.
STRICT_FIELDS = ("states_tags",)
# Parameters the ETL owns; a --query setting them would break paging or mapping.
RESERVED = frozenset({"page", "page_size", "fields", "json"})
# Popularity (OFF's default order) reshuffles pages between two runs, which would make a resumed
# crawl skip products; the creation date does not move.
DEFAULT_SORT = "created_t"
RETRY_STATUSES = (429, 500, 502, 503, 504)
# (connect, read) seconds; a search page of 100 full products can take a while to build.
TIMEOUT = (10.0, 60.0)


def _version() -> str:
    try:
        return metadata.version("offsim-etl")
    except metadata.PackageNotFoundError:
        return "0"


USER_AGENT = f"offsim-etl/{_version()} (https://github.com/offsim)"


class QueryError(ValueError):
    """--query cannot be turned into search parameters."""


@dataclass(frozen=True)
class SearchQuery:
    """One search: where, which filters, how many per page. Its `key` names it in
    `etl_positions`, so a different filter or page size never resumes another's position."""

    base_url: str
    filters: tuple[tuple[str, str], ...]
    page_size: int
    fields: tuple[str, ...] = FIELDS

    @classmethod
    def build(
        cls, base_url: str, query: str | None, page_size: int, strict: bool = False
    ) -> SearchQuery:
        fields = FIELDS + STRICT_FIELDS if strict else FIELDS
        return cls(base_url.rstrip("/"), parse_query(query), page_size, fields)

    @property
    def url(self) -> str:
        return self.base_url + SEARCH_PATH

    @property
    def key(self) -> str:
        named = sorted([*self.filters, ("page_size", str(self.page_size))])
        return f"{self.url}?{urlencode(named)}"

    def params(self, page: int) -> list[tuple[str, str]]:
        return [
            *self.filters,
            ("fields", ",".join(self.fields)),
            ("page_size", str(self.page_size)),
            ("page", str(page)),
        ]


def parse_query(query: str | None) -> tuple[tuple[str, str], ...]:
    """--query: a bare word is a category ("chocolates" -> categories_tags_en=chocolates);
    anything with "=" is OFF search filters as a query string
    ("brands_tags=ferrero&countries_tags_en=france"). The v2 search has no full-text search."""
    query = (query or "").strip()
    if not query:
        filters: list[tuple[str, str]] = []
    elif "=" not in query:
        filters = [("categories_tags_en", query)]
    else:
        try:
            filters = parse_qsl(query, strict_parsing=True)
        except ValueError:
            raise QueryError(f"--query {query!r} is not key=value&key=value") from None
    reserved = sorted({key for key, _ in filters} & RESERVED)
    if reserved:
        raise QueryError(f"--query must not set {', '.join(reserved)}: the ETL sets it")
    if not any(key == "sort_by" for key, _ in filters):
        filters.append(("sort_by", DEFAULT_SORT))
    return tuple(filters)


class Throttle:
    """At most `per_minute` calls to `wait()` per minute, on a monotonic clock."""

    def __init__(
        self,
        per_minute: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_minute <= 0:
            raise ValueError(f"OFF_SEARCH_RATE must be > 0 requests per minute, got {per_minute}")
        self.interval = 60.0 / per_minute
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    def wait(self) -> None:
        now = self._clock()
        if self._next is not None and now < self._next:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self.interval


class _PoliteRetry(Retry):
    """urllib3 retries the first failure at once; OFF is better served by waiting from the
    first retry on (backoff_factor, then 2x, 4x ...)."""

    def get_backoff_time(self) -> float:
        if not self.history:
            return 0.0
        return max(self.backoff_factor, super().get_backoff_time())

    def increment(self, *args: Any, **kwargs: Any) -> Retry:
        retry = super().increment(*args, **kwargs)  # raises once the retries are spent
        last = retry.history[-1]
        cause = f"HTTP {last.status}" if last.status else _cause(last.error) if last.error else "?"
        log.warning("OFF search: %s, retrying (%s left)", cause, retry.total)
        return retry


def make_session(retries: int = 5, backoff: float = 6.0) -> requests.Session:
    """A Session that retries GETs on connection errors, timeouts, 429 and 5xx."""
    retry = _PoliteRetry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        backoff_max=120.0,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=True,
        retry_after_max=300.0,
        # Hand back the last response so the error can say which status ended the page.
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
    return session


def fetch_page(session: requests.Session, query: SearchQuery, page: int) -> dict[str, Any]:
    """One search page, or ExtractError once urllib3 has spent its retries."""
    try:
        response = session.get(query.url, params=query.params(page), timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise ExtractError(
            f"OFF search page {page} at {query.base_url} failed: {_cause(exc)}"
        ) from exc
    if response.status_code != 200:
        raise ExtractError(
            f"OFF search page {page} at {query.base_url} failed:"
            f" HTTP {response.status_code} {response.reason}"
            " (after retries)"
        )
    try:
        body = response.json()
    except ValueError as exc:
        raise ExtractError(f"OFF search page {page} is not JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("products"), list):
        raise ExtractError(f"OFF search page {page} has no products list")
    return body


def is_last_page(page: int, body: dict[str, Any], requested_size: int) -> bool:
    """True when no page follows `page`: it came back empty, or it reaches `count`.

    `page_size` and `count` are numbers in recent responses and strings in older ones; the size
    the server says it used wins over the one we asked for (it may cap it)."""
    if not body.get("products"):
        return True
    count = _as_int(body.get("count"))
    size = _as_int(body.get("page_size")) or requested_size
    return count is not None and page * size >= count


def read_search(
    session: requests.Session,
    query: SearchQuery,
    throttle: Throttle,
    *,
    start_page: int = 1,
    max_pages: int | None = None,
) -> Generator[RawBatch, None, None]:
    """One batch per page from `start_page` until the last page or `max_pages` pages."""
    page = start_page
    fetched = 0
    while max_pages is None or fetched < max_pages:
        throttle.wait()
        body = fetch_page(session, query, page)
        fetched += 1
        products = body["products"]
        last = is_last_page(page, body, query.page_size)
        yield RawBatch(
            records=products,
            advance=len(products),
            total=_expected(body, query.page_size, start_page, max_pages),
            page=page,
            next_page=None if last else page + 1,
            finished=last,
        )
        if last:
            return
        page += 1


def _expected(
    body: dict[str, Any], page_size: int, start_page: int, max_pages: int | None
) -> int | None:
    """How many products this run will read, for the progress bar."""
    count = _as_int(body.get("count"))
    if count is None:
        return None
    remaining = max(0, count - (start_page - 1) * page_size)
    return remaining if max_pages is None else min(remaining, max_pages * page_size)


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _cause(exc: BaseException) -> str:
    """The innermost reason (e.g. "Connection refused"), not urllib3's nested repr chain."""
    while exc.__context__ is not None or exc.__cause__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
