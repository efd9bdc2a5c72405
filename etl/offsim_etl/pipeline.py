"""`run_etl`: extract -> transform -> load, batch by batch, with progress and a summary.

Extraction and transformation are blocking (requests, gzip, json) and run in a worker thread
via `asyncio.to_thread`; loading runs on the event loop on one asyncpg connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import asyncpg
from offsim_common.config import Settings
from offsim_common.metrics import ETL_RECORDS
from tqdm import tqdm

from . import load
from .batch import RawBatch
from .errors import DatabaseError, EtlError
from .extract_api import SearchQuery, Throttle, make_session, read_search
from .extract_jsonl import read_jsonl
from .summary import EtlSummary
from .transform import Product, Reason, transform

log = logging.getLogger(__name__)

SOURCES = ("sample", "api", "jsonl")
SAMPLE_NAME = "products.jsonl.gz"
MAX_PAGE_SIZE = 1000
CONNECT_TIMEOUT = 10.0


def sample_path() -> Path:
    """The bundled sample of real OFF products (see data/ATTRIBUTION.md)."""
    return Path(str(resources.files("offsim_etl") / "data" / SAMPLE_NAME))


async def run_etl(
    settings: Settings,
    source: str = "sample",
    *,
    file: Path | None = None,
    strict: bool = False,
    max_pages: int | None = None,
    page_size: int = 100,
    query: str | None = None,
    progress: bool = True,
    restart: bool = False,
    retries: int = 5,
    backoff: float | None = None,
    batch_size: int = 500,
) -> EtlSummary:
    """Load OFF products from `source` into the database of `settings`.

    sample: the bundled sample; jsonl: an OFF JSONL dump at `file` (.gz or plain); api: the OFF
    search API at `settings.off_api_url`, `page_size` products per page, filtered by `query`
    (see `extract_api.parse_query`), resuming where the last unfinished run of the same query
    stopped unless `restart`. `strict` applies the original ETL's completeness filter.
    `retries` and `backoff` (seconds, default one request interval) tune the API's retries.

    Raises EtlError (DatabaseError, ExtractError) with a one-line message; its `summary` holds
    what was loaded before the failure.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}, got {page_size}")
    if max_pages is not None and max_pages < 1:
        raise ValueError(f"max_pages must be >= 1, got {max_pages}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if source == "jsonl":
        if file is None:
            raise ValueError("source 'jsonl' needs a file")
        if not await asyncio.to_thread(file.is_file):
            raise EtlError(f"no such file: {file}")

    search = throttle = None
    if source == "api":
        # A bad --query or rate fails before anything is opened.
        try:
            search = SearchQuery.build(settings.off_api_url, query, page_size, strict)
            throttle = Throttle(settings.off_search_rate)
        except ValueError as exc:  # QueryError included
            raise EtlError(str(exc)) from exc

    conn = await _connect(settings.database_url)
    try:
        await _prepare_database(conn)
        if search is None or throttle is None:
            path = sample_path() if source == "sample" else file
            assert path is not None
            return await _pipeline(
                conn,
                read_jsonl(path, batch_size),
                EtlSummary(source=f"{source} {path.name}"),
                strict=strict,
                kind=source,
                position_key=None,
                progress=progress,
                unit="B",
            )
        stored = None if restart else await load.read_position(conn, search.key)
        start_page = stored or 1
        if stored:
            log.info("resuming %s at page %d", search.key, start_page)
        with make_session(retries, throttle.interval if backoff is None else backoff) as session:
            return await _pipeline(
                conn,
                read_search(session, search, throttle, start_page=start_page, max_pages=max_pages),
                EtlSummary(source=f"api {search.key}", start_page=start_page),
                strict=strict,
                kind=source,
                position_key=search.key,
                progress=progress,
                unit=" products",
            )
    finally:
        await conn.close()


async def _connect(dsn: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    except (
        OSError,
        TimeoutError,
        ValueError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
    ) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatabaseError(f"cannot connect to the database at {_redact(dsn)}: {reason}") from exc


async def _prepare_database(conn: asyncpg.Connection) -> None:
    missing = await load.missing_tables(conn)
    if missing:
        raise DatabaseError(
            f"the database is not migrated (missing tables: {', '.join(missing)}):"
            " run `offsim migrate` first"
        )
    if not await load.try_lock_run(conn):
        raise DatabaseError("another offsim-etl run is loading this database; wait for it to end")
    await load.create_staging(conn)


@dataclass
class _Prepared:
    """A batch after `transform`: unique barcodes, ready to load."""

    raw: RawBatch
    products: list[Product]
    read: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    cleared: Counter[str] = field(default_factory=Counter)


def prepare(raw: RawBatch, strict: bool) -> _Prepared:
    """Transform a raw batch; the last record of a barcode wins (the upsert cannot take one
    barcode twice in a statement)."""
    by_barcode: dict[str, Product] = {}
    prepared = _Prepared(raw=raw, products=[], read=len(raw.records) + raw.bad_lines)
    if raw.bad_lines:
        prepared.rejected[Reason.BAD_JSON.value] += raw.bad_lines
    for record in raw.records:
        try:
            result = transform(record, strict=strict)
        except Exception:  # a bad record must never end the run; transform is meant not to raise
            log.debug("unreadable record", exc_info=True)
            result = Reason.INVALID
        if isinstance(result, Reason):
            prepared.rejected[result.value] += 1
            continue
        if by_barcode.pop(result.barcode, None) is not None:
            prepared.duplicates += 1
        by_barcode[result.barcode] = result
    prepared.products = list(by_barcode.values())
    for product in prepared.products:
        prepared.cleared.update(product.cleared)
    # The records are done with; drop them so the batch does not hold a page of raw JSON.
    raw.records = []
    return prepared


def _next_prepared(batches: Iterator[RawBatch], strict: bool) -> _Prepared | None:
    raw = next(batches, None)
    return None if raw is None else prepare(raw, strict)


async def _prepared_batches(
    batches: Generator[RawBatch, None, None], strict: bool, *, prefetch: bool
) -> AsyncIterator[_Prepared]:
    """Batches after `prepare`, made in a worker thread.

    With `prefetch`, batch n+1 is read and transformed while batch n loads, which overlaps the
    JSON decoding (most of a file's cost) with Postgres. Not for the API: a prefetched page is a
    request, possibly minutes of retries, that a failed load would throw away.
    """
    pending = asyncio.ensure_future(asyncio.to_thread(_next_prepared, batches, strict))
    try:
        while (prepared := await pending) is not None:
            if prefetch:
                pending = asyncio.ensure_future(asyncio.to_thread(_next_prepared, batches, strict))
                yield prepared
            else:
                yield prepared
                pending = asyncio.ensure_future(asyncio.to_thread(_next_prepared, batches, strict))
    finally:
        # Leave no thread reading the source behind, and no exception unretrieved.
        if not pending.done():
            await asyncio.wait([pending])
        if not pending.cancelled():
            pending.exception()
        with contextlib.suppress(ValueError):  # still running only if we were cancelled
            batches.close()


async def _pipeline(
    conn: asyncpg.Connection,
    batches: Generator[RawBatch, None, None],
    summary: EtlSummary,
    *,
    strict: bool,
    kind: str,
    position_key: str | None,
    progress: bool,
    unit: str,
) -> EtlSummary:
    started = time.perf_counter()
    bar = tqdm(
        desc=kind,
        unit=unit,
        # Bytes read as kB/MB; products as plain counts.
        unit_scale=unit == "B",
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
        disable=not progress or not sys.stderr.isatty(),
    )
    try:
        async with contextlib.aclosing(
            _prepared_batches(batches, strict, prefetch=position_key is None)
        ) as prepared_batches:
            async for prepared in prepared_batches:
                raw = prepared.raw
                position = None
                if position_key is not None and (raw.finished or raw.next_page is not None):
                    position = (position_key, None if raw.finished else raw.next_page)
                result = await load.load_batch(conn, prepared.products, position=position)
                _add(summary, prepared, result)
                _count(kind, prepared, result)
                if raw.total is not None and bar.total != raw.total:
                    bar.total = raw.total
                bar.set_postfix(kept=summary.kept, rejected=summary.rejected_total, refresh=False)
                bar.update(raw.advance)
    except EtlError as exc:
        exc.summary = summary
        raise
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise DatabaseError(
            f"database error after {summary.kept} products: {exc}".splitlines()[0], summary
        ) from exc
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - started
    return summary


def _add(summary: EtlSummary, prepared: _Prepared, result: load.BatchResult) -> None:
    summary.read += prepared.read
    summary.kept += len(prepared.products)
    summary.duplicates += prepared.duplicates
    summary.rejected.update(prepared.rejected)
    summary.cleared.update(prepared.cleared)
    summary.inserted += result.inserted
    summary.updated += result.updated
    summary.unchanged += result.unchanged
    summary.new_brands += result.new_brands
    if prepared.raw.page is not None:
        summary.pages += 1
        summary.finished = prepared.raw.finished


def _count(kind: str, prepared: _Prepared, result: load.BatchResult) -> None:
    """The offsim_etl_records_total metric, for a process that serves /metrics (the launcher)."""
    for outcome, n in (
        ("inserted", result.inserted),
        ("updated", result.updated),
        ("unchanged", result.unchanged),
        ("duplicate", prepared.duplicates),
        ("rejected", sum(prepared.rejected.values())),
    ):
        if n:
            ETL_RECORDS.labels(kind, outcome).inc(n)


def _redact(dsn: str) -> str:
    """The DSN without its password, fit for an error message."""
    return re.sub(r"(://[^:/@?]*):[^@/?]+@", r"\1:***@", dsn)
