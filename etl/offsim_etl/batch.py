"""What an extractor hands the loader: a slice of raw records plus where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RawBatch:
    """Raw OFF records as read, before `transform`.

    `records` is what the source's decoder (see `prepare`) turns into OFF objects: parsed
    objects for the API, undecoded lines for JSONL, one pyarrow RecordBatch for Parquet.

    `next_page` and `finished` only matter for the API: they are stored in `etl_positions` in
    the transaction that stores the records, so the position never runs ahead of the data.
    """

    records: Any = field(default_factory=list)
    # Progress made by this batch, in the source's unit (bytes of the file, or products).
    advance: int = 0
    # The progress total, once the source knows it (the file size, the search's `count`).
    total: int | None = None
    page: int | None = None
    next_page: int | None = None
    finished: bool = False
