"""Raw records -> binary COPY payloads: the CPU-heavy part of the ETL, run in worker processes.

A source hands the pipeline its records undecoded (a block of JSONL lines, a Parquet record
batch) together with a `decode` function; `prepare` runs in a worker of the process pool, so
splitting, JSON decoding, `transform` and the COPY encoding use every core while the parent only
reads the file and talks to Postgres. Its result is two byte strings, the barcodes and a few
counters: cheap to pickle back, and all the loader needs, with no per-row object to unpickle.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .copy_binary import PRODUCT_TYPES, encode_rows
from .transform import Product, Reason, transform

log = logging.getLogger(__name__)

LINK_TYPES = ("text", "text")
# A source's decoder: its raw records -> OFF objects, or the Reason one cannot be decoded.
Decode = Callable[[Any], Iterable[object]]


@dataclass
class Prepared:
    """One batch after `transform`: unique barcodes, sorted, as binary COPY payloads."""

    # `load.PRODUCT_COLUMNS` rows in barcode order, and (barcode, brand tag) for every brand of
    # every kept product, each as a binary COPY payload (see `copy_binary`).
    products: bytes = b""
    links: bytes = b""
    barcodes: list[str] = field(default_factory=list)
    read: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    cleared: Counter[str] = field(default_factory=Counter)

    @property
    def kept(self) -> int:
        return len(self.barcodes)


def decode_objects(records: list[object]) -> list[object]:
    """The decoder of a source whose records are already objects (the API's JSON pages)."""
    return records


def prepare(records: Any, decode: Decode, strict: bool) -> Prepared:
    """Decode and transform one batch; the last record of a barcode wins (the upsert cannot take
    one barcode twice in a statement), the earlier ones count as duplicates."""
    by_barcode: dict[str, Product] = {}
    prepared = Prepared()
    for record in decode(records):
        prepared.read += 1
        if isinstance(record, Reason):
            prepared.rejected[record.value] += 1
            continue
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
    # Sorted, so that any two writers lock rows in the same order and cannot deadlock.
    rows = []
    links = []
    for barcode in sorted(by_barcode):
        product = by_barcode[barcode]
        rows.append(product.row())
        links.extend((barcode, tag) for tag in product.brands)
        if product.cleared:
            prepared.cleared.update(product.cleared)
        prepared.barcodes.append(barcode)
    if rows:
        prepared.products = encode_rows(rows, PRODUCT_TYPES)
        prepared.links = encode_rows(links, LINK_TYPES)
    return prepared
