"""`run_etl`: extract -> transform -> load, batch by batch, with progress and a summary.

Files (sample, JSONL, Parquet) are read in a thread and decoded + transformed in a process pool
(`prepare`), several batches ahead; the API is fetched and transformed in a thread, one page at a
time. Loading runs on the event loop on one asyncpg connection, one transaction per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.context
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Generator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from importlib import resources
from pathlib import Path

import asyncpg
from offsim_common.metrics import ETL_RECORDS
from tqdm import tqdm

from . import load
from .batch import RawBatch
from .errors import DatabaseError, EtlError
from .extract_api import SearchQuery, Throttle, make_session, read_search
from .extract_jsonl import decode_lines, read_jsonl
from .prepare import Decode, Prepared, decode_objects, prepare
from .settings import EtlSettings
from .summary import EtlSummary

log = logging.getLogger(__name__)

SOURCES = ("sample", "api", "jsonl", "parquet")
FILE_SOURCES = ("jsonl", "parquet")
SAMPLE_NAME = "products.jsonl.gz"
MAX_PAGE_SIZE = 1000
CONNECT_TIMEOUT = 10.0
# What the pool's processes import up front (see `_mp_context`); pyarrow only when it is used.
_WORKER_MODULES = ("offsim_etl.prepare", "offsim_etl.extract_jsonl")


def default_workers() -> int:
    """One parsing process per core: the reading process and Postgres mostly wait on them."""
    return max(1, os.cpu_count() or 1)


def sample_path() -> Path:
    """The bundled sample of real OFF products (see data/ATTRIBUTION.md)."""
    return Path(str(resources.files("offsim_etl") / "data" / SAMPLE_NAME))


async def run_etl(
    settings: EtlSettings,
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
    workers: int | None = None,
) -> EtlSummary:
    """Load OFF products from `source` into the database of `settings`.

    sample: the bundled sample; jsonl: an OFF JSONL dump at `file` (.gz or plain); parquet: OFF's
    `food` Parquet export at `file`; api: the OFF
    search API at `settings.off_api_url`, `page_size` products per page, filtered by `query`
    (see `extract_api.parse_query`), resuming where the last unfinished run of the same query
    stopped unless `restart`. `strict` applies the original ETL's completeness filter.
    `retries` and `backoff` (seconds, default one request interval) tune the API's retries.
    `workers` processes decode and transform a file (default: one per core).

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
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if source in FILE_SOURCES:
        if file is None:
            raise ValueError(f"source {source!r} needs a file")
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
            if source == "parquet":
                # pyarrow is loaded only by runs (and worker processes) that read Parquet.
                from .extract_parquet import decode_record_batch, read_parquet

                batches, decode = read_parquet(path, batch_size), decode_record_batch
            else:
                batches, decode = read_jsonl(path, batch_size), decode_lines
            return await _pipeline(
                conn,
                _pooled(batches, decode, strict, workers or default_workers()),
                EtlSummary(source=f"{source} {path.name}"),
                kind=source,
                position_key=None,
                progress=progress,
                # Parquet knows its row count up front; a JSONL dump only its size in bytes.
                unit=" products" if source == "parquet" else "B",
            )
        stored = None if restart else await load.read_position(conn, search.key)
        start_page = stored or 1
        if stored:
            log.info("resuming %s at page %d", search.key, start_page)
        with make_session(retries, throttle.interval if backoff is None else backoff) as session:
            pages = read_search(
                session, search, throttle, start_page=start_page, max_pages=max_pages
            )
            return await _pipeline(
                conn,
                _threaded(pages, strict),
                EtlSummary(source=f"api {search.key}", start_page=start_page),
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


async def _threaded(
    batches: Generator[RawBatch, None, None], strict: bool
) -> AsyncIterator[tuple[RawBatch, Prepared]]:
    """The API's batches, fetched and prepared in a worker thread one at a time.

    No prefetch: a prefetched page is a request, possibly minutes of retries, that a failed load
    would throw away. A page of `fields=` results is small, so there is nothing to parallelise.
    """
    try:
        while (raw := await asyncio.to_thread(next, batches, None)) is not None:
            yield raw, await asyncio.to_thread(prepare, raw.records, decode_objects, strict)
    finally:
        with contextlib.suppress(ValueError):  # still running only if we were cancelled
            batches.close()


async def _pooled(
    batches: Generator[RawBatch, None, None], decode: Decode, strict: bool, workers: int
) -> AsyncIterator[tuple[RawBatch, Prepared]]:
    """A file's batches, read in a thread and prepared in a process pool, in file order.

    The reading side only splits the file into batches of raw records; `workers` processes
    decode and transform them (the CPU-bound part), so every core works while this process
    COPYs earlier batches into Postgres. At most 2 x `workers` batches wait in the queue, so
    memory stays flat however big the file. A read error (a truncated gzip) is queued in order:
    the batches before it are still loaded.
    """
    loop = asyncio.get_running_loop()
    executor = ProcessPoolExecutor(workers, mp_context=_mp_context())
    queue: asyncio.Queue[tuple[RawBatch, asyncio.Future[Prepared]] | BaseException | None] = (
        asyncio.Queue(maxsize=2 * workers)
    )
    reading: asyncio.Future[RawBatch | None] | None = None

    async def feed() -> None:
        nonlocal reading
        try:
            while True:
                reading = loop.run_in_executor(None, next, batches, None)
                # Shielded: cancelling the feeder must not orphan a thread still reading.
                raw = await asyncio.shield(reading)
                if raw is None:
                    break
                records, raw.records = raw.records, None
                job = loop.run_in_executor(executor, prepare, records, decode, strict)
                await queue.put((raw, job))
        except Exception as exc:  # handed over in order, after the batches read before it
            await queue.put(exc)
        else:
            await queue.put(None)

    feeder = asyncio.create_task(feed())
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            raw, job = item
            try:
                prepared = await job
            except BrokenProcessPool as exc:
                raise EtlError(
                    f"a parsing process died ({exc}); is the machine out of memory?"
                ) from exc
            yield raw, prepared
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        # Stopped early (a database error): drop the batches not loaded, leave no thread
        # reading the source behind and no exception unretrieved.
        while not queue.empty():
            if isinstance(item := queue.get_nowait(), tuple):
                item[1].cancel()
        if reading is not None:
            await asyncio.wait([reading])
            if not reading.cancelled():
                reading.exception()
        batches.close()
        await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)


def _mp_context() -> multiprocessing.context.BaseContext:
    """forkserver: workers are forked from a small single-threaded server, never from this
    process, whose threads (the reader, asyncpg's) could hold a lock across a fork. The server
    imports the parsing modules once; each worker then starts in milliseconds. `__main__` too:
    a child imports the parent's main script (for `offsim-etl`, the CLI with asyncpg, requests
    and aiohttp) unless its server already did, and that import cost more CPU than parsing a
    thousand products."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", *_WORKER_MODULES])
    return context


async def _pipeline(
    conn: asyncpg.Connection,
    batches: AsyncIterator[tuple[RawBatch, Prepared]],
    summary: EtlSummary,
    *,
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
        async with contextlib.aclosing(batches) as prepared_batches:  # type: ignore[type-var]
            async for raw, prepared in prepared_batches:
                position = None
                if position_key is not None and (raw.finished or raw.next_page is not None):
                    position = (position_key, None if raw.finished else raw.next_page)
                result = await load.load_batch(
                    conn,
                    prepared.products,
                    prepared.links,
                    prepared.barcodes,
                    position=position,
                )
                _add(summary, raw, prepared, result)
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


def _add(summary: EtlSummary, raw: RawBatch, prepared: Prepared, result: load.BatchResult) -> None:
    summary.read += prepared.read
    summary.kept += prepared.kept
    summary.duplicates += prepared.duplicates
    summary.rejected.update(prepared.rejected)
    summary.cleared.update(prepared.cleared)
    summary.inserted += result.inserted
    summary.updated += result.updated
    summary.unchanged += result.unchanged
    summary.new_brands += result.new_brands
    if raw.page is not None:
        summary.pages += 1
        summary.finished = raw.finished


def _count(kind: str, prepared: Prepared, result: load.BatchResult) -> None:
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
