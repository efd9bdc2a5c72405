"""`offsim-etl`: parse the command line, read the environment, run `run_etl`, print the summary."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from offsim_common.settings import ConfigError
from prometheus_client import start_http_server
from tqdm.contrib.logging import logging_redirect_tqdm

from .errors import EtlError
from .extract_api import DEFAULT_SORT, FIELDS, SEARCH_PATH
from .pipeline import FILE_SOURCES, MAX_PAGE_SIZE, SOURCES, run_etl
from .settings import EtlSettings
from .summary import EtlSummary

DESCRIPTION = """\
Load Open Food Facts products into the offsim database (table products, brands,
product_brands). Every run is an upsert: running the same input twice changes nothing.

sources:
  sample   the bundled sample of ~1000 real OFF products (default; offline)
  jsonl    an OFF JSONL dump, one product per line, .gz or plain (--file),
           e.g. https://static.openfoodfacts.org/data/openfoodfacts-products.jsonl.gz;
           streamed, so a full dump needs no more memory than a small one
  parquet  OFF's food Parquet export (--file), e.g. food.parquet from the Hugging Face
           dataset openfoodfacts/product-database; streamed in record batches
  api      the OFF search API (GET {path} on OFF_API_URL), page by page,
           asking only for the fields we map; resumable (see --restart)

By default every product with a barcode and a name is kept; --strict keeps only what the
original ETL kept. Records that cannot be products (bad JSON, no code, implausible barcode,
no name, absurd numbers) are counted by reason in the summary and skipped.
"""

EPILOG = """\
environment:
  DATABASE_URL     Postgres DSN (default postgresql://postgres@127.0.0.1:5432/postgres);
                   the database must be migrated (`offsim migrate`)
  OFF_API_URL      OFF base URL for --source api (default https://world.openfoodfacts.org)
  OFF_SEARCH_RATE  API requests per minute (default 10, OFF's limit for search)
  LOG_LEVEL        logging level (default INFO)

examples:
  offsim-etl
  offsim-etl --source jsonl --file openfoodfacts-products.jsonl.gz --strict
  offsim-etl --source parquet --file food.parquet
  offsim-etl --source api --query chocolates --max-pages 5
  offsim-etl --source api --query 'brands_tags=ferrero&countries_tags_en=france'

exit status: 0 on success, 1 on any error (one line on stderr), 2 on bad arguments.
"""

T = TypeVar("T", int, float)

API_ONLY = ("query", "page_size", "max_pages", "restart", "retries", "backoff")


def _bounded(kind: Callable[[str], T], minimum: T, maximum: T | None = None) -> Callable[[str], T]:
    """An argparse type: `kind` of the text, within [minimum, maximum]."""

    def parse(text: str) -> T:
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value

    return parse


_positive = _bounded(int, 1)
_count = _bounded(int, 0)
_page_size = _bounded(int, 1, MAX_PAGE_SIZE)
_seconds = _bounded(float, 0.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="offsim-etl",
        description=DESCRIPTION.format(path=SEARCH_PATH),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default="sample",
        help="where the products come from (default: sample)",
    )
    parser.add_argument(
        "--file",
        type=Path,
        metavar="PATH",
        help="the JSONL dump for --source jsonl (.gz or plain), the Parquet export for"
        " --source parquet",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="keep only products the original ETL kept: states_tags complete"
        " (name, brands, quantity, front photo, nutrition facts, checked),"
        " NOVA 1-4 and Nutri-Score -15..40",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive,
        default=500,
        metavar="N",
        help="products per transaction for sample/jsonl/parquet (default: 500; the API"
        " loads one page per transaction)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar (it is also off when stderr is not a terminal)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object instead of text"
    )
    parser.add_argument(
        "--metrics-port", type=int, metavar="PORT",
        help="serve Prometheus metrics (offsim_etl_records_total) on this port while running, "
        "for a long API crawl or dump load",
    )  # fmt: skip

    api = parser.add_argument_group("--source api")
    api.add_argument(
        "--query",
        metavar="Q",
        help="which products: a category (e.g. 'chocolates' ="
        " categories_tags_en=chocolates) or OFF search filters as a query"
        " string (e.g. 'brands_tags=ferrero&countries_tags_en=france';"
        " ',' is AND, '|' is OR). The v2 search has no full-text terms."
        f" Sorted by sort_by={DEFAULT_SORT} unless you set sort_by."
        " Default: all products",
    )
    api.add_argument(
        "--page-size",
        type=_page_size,
        default=100,
        metavar="N",
        help=f"products per page, 1..{MAX_PAGE_SIZE} (default: 100)",
    )
    api.add_argument(
        "--max-pages",
        type=_positive,
        metavar="N",
        help="stop after N pages; the position is kept, so the next run of the"
        " same query goes on from there (default: until the last page)",
    )
    api.add_argument(
        "--restart",
        action="store_true",
        help="start at page 1 even if an earlier run of this query (same filters"
        " and page size) stopped midway; by default it resumes there",
    )
    api.add_argument(
        "--retries",
        type=_count,
        default=5,
        metavar="N",
        help="retries per page on timeouts, connection errors, 429 and 5xx (default: 5)",
    )
    api.add_argument(
        "--backoff",
        type=_seconds,
        metavar="SECONDS",
        help="first retry delay, doubling each retry, capped at 120 s; a"
        " Retry-After header wins (default: 60/OFF_SEARCH_RATE)",
    )
    parser.epilog = (
        EPILOG + f"\nfields requested from the API: {','.join(FIELDS)}"
        " (and states_tags with --strict)\n"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.source in FILE_SOURCES and args.file is None:
        parser.error(f"--source {args.source} needs --file PATH")
    if args.source not in FILE_SOURCES and args.file is not None:
        parser.error("--file goes with --source jsonl or parquet")
    if args.source != "api":
        given = [name for name in API_ONLY if getattr(args, name) != parser.get_default(name)]
        if given:
            parser.error(f"--{given[0].replace('_', '-')} goes with --source api")

    try:
        settings = EtlSettings.from_env()
    except ConfigError as exc:
        sys.exit(f"offsim-etl: {exc}")
    logging.basicConfig(
        level=settings.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    # Our retry warnings say it in one line; urllib3's repeat it with the whole URL.
    logging.getLogger("urllib3").setLevel(logging.ERROR)

    if args.metrics_port is not None:
        start_http_server(args.metrics_port)
    try:
        with logging_redirect_tqdm():
            summary = asyncio.run(
                run_etl(
                    settings,
                    args.source,
                    file=args.file,
                    strict=args.strict,
                    max_pages=args.max_pages,
                    page_size=args.page_size,
                    query=args.query,
                    progress=not args.quiet,
                    restart=args.restart,
                    retries=args.retries,
                    backoff=args.backoff,
                    batch_size=args.batch_size,
                )
            )
    except KeyboardInterrupt:
        sys.exit("offsim-etl: interrupted (committed batches stay; the API resumes next run)")
    except EtlError as exc:
        if exc.summary is not None and exc.summary.read:
            print(_render(exc.summary, args.json), file=sys.stderr)
        sys.exit(f"offsim-etl: {exc}")
    print(_render(summary, args.json))


def _render(summary: EtlSummary, as_json: bool) -> str:
    return json.dumps(summary.as_dict()) if as_json else summary.format()


if __name__ == "__main__":
    main()
