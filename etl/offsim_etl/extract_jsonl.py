"""Stream an OFF JSONL dump (gzip or plain) in batches, in constant memory.

The full dump is tens of GB of one product per line, so it is read line by line and never held
whole; a line that is not JSON is counted, not fatal.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Generator
from pathlib import Path
from typing import BinaryIO

from .batch import RawBatch
from .errors import ExtractError

_GZIP_MAGIC = b"\x1f\x8b"


def read_jsonl(path: Path, batch_size: int = 500) -> Generator[RawBatch, None, None]:
    """Yield batches of parsed lines; progress is counted in bytes of `path` (compressed bytes for
    a .gz), which is what makes an ETA possible on a dump whose line count is unknown."""
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise ExtractError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with raw:
        size = os.fstat(raw.fileno()).st_size
        # Sniff rather than trust the extension: dumps get renamed.
        compressed = raw.peek(2)[:2] == _GZIP_MAGIC
        lines: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        batch = RawBatch(total=size)
        reported = 0
        try:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    batch.records.append(json.loads(line))
                except (ValueError, RecursionError):
                    # ValueError covers bad JSON and bad UTF-8 alike.
                    batch.bad_lines += 1
                if len(batch.records) + batch.bad_lines >= batch_size:
                    position = raw.tell()
                    batch.advance, reported = position - reported, position
                    yield batch
                    batch = RawBatch(total=size)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ExtractError(f"{path.name} is truncated or corrupt: {exc}") from exc
        except OSError as exc:
            raise ExtractError(f"cannot read {path}: {exc.strerror or exc}") from exc
        batch.advance = size - reported
        yield batch
