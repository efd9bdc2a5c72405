"""Stream an OFF JSONL dump (gzip or plain) in batches of raw lines, in constant memory.

The full dump is tens of GB of one product per line, so it is read line by line and never held
whole. The lines are not decoded here: `decode_lines` does that in a worker process (see
`prepare`), so the reading process only gunzips and splits. A line that is not JSON is counted,
not fatal.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import BinaryIO

import orjson

from .batch import RawBatch
from .errors import ExtractError
from .transform import Reason

_GZIP_MAGIC = b"\x1f\x8b"
# Bigger reads than io's 8 KiB default: fewer trips through gzip's Python layer per ~18 KB line.
_READ_BUFFER = 1 << 20


def read_jsonl(path: Path, batch_size: int = 500) -> Generator[RawBatch, None, None]:
    """Yield batches of `batch_size` non-blank lines (bytes, undecoded); progress is counted in
    bytes of `path` (compressed bytes for a .gz), which is what makes an ETA possible on a dump
    whose line count is unknown."""
    try:
        raw = path.open("rb", buffering=_READ_BUFFER)
    except OSError as exc:
        raise ExtractError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with raw:
        size = os.fstat(raw.fileno()).st_size
        # Sniff rather than trust the extension: dumps get renamed.
        compressed = raw.peek(2)[:2] == _GZIP_MAGIC
        lines: BinaryIO = raw
        if compressed:
            lines = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
        batch = RawBatch(records=[], total=size)
        reported = 0
        try:
            for line in lines:
                if not line.strip():
                    continue
                batch.records.append(line)
                if len(batch.records) >= batch_size:
                    position = raw.tell()
                    batch.advance, reported = position - reported, position
                    yield batch
                    batch = RawBatch(records=[], total=size)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ExtractError(f"{path.name} is truncated or corrupt: {exc}") from exc
        except OSError as exc:
            raise ExtractError(f"cannot read {path}: {exc.strerror or exc}") from exc
        batch.advance = size - reported
        yield batch


def decode_lines(lines: list[bytes]) -> Iterator[object]:
    """Each line as a JSON value, or `Reason.BAD_JSON`.

    orjson first (several times faster on full OFF objects); the standard module only for what
    orjson refuses, so that the few lines it is stricter about (integers beyond 64 bits, NaN)
    are read exactly as before rather than rejected.
    """
    for line in lines:
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError:
            try:
                yield json.loads(line)
            except (ValueError, RecursionError):
                # ValueError covers bad JSON and bad UTF-8 alike.
                yield Reason.BAD_JSON
