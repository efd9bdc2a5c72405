"""Raw records -> rows ready to COPY: the CPU-heavy half of the ETL, run in worker processes.

A source hands the pipeline its records undecoded (JSONL lines, a Parquet record batch) together
with a `decode` function; `prepare` runs in a worker of the process pool, so JSON decoding and
`transform` use every core while the parent only reads the file and talks to Postgres. Its
result is plain tuples and counters: cheap to pickle back, and all the loader needs.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .transform import Product, Reason, transform

log = logging.getLogger(__name__)

# A source's decoder: its raw records -> OFF objects, or the Reason one cannot be decoded.
Decode = Callable[[Any], Iterable[object]]


@dataclass
class Prepared:
    """One batch after `transform`: unique barcodes, sorted, as `load.PRODUCT_COLUMNS` rows."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    # (barcode, brand tag) for every brand of every kept product.
    links: list[tuple[str, str]] = field(default_factory=list)
    read: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    cleared: Counter[str] = field(default_factory=Counter)

    @property
    def kept(self) -> int:
        return len(self.rows)


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
    for barcode in sorted(by_barcode):
        product = by_barcode[barcode]
        prepared.rows.append(product.row())
        prepared.links.extend((barcode, tag) for tag in product.brands)
        prepared.cleared.update(product.cleared)
    return prepared
