"""Stream an OFF JSONL dump (gzip or plain) in blocks of whole lines, in constant memory.

The full dump is tens of GB of one product per line, so it is read in large chunks and never
held whole. The reading process only inflates (zlib, which releases the GIL, so it runs beside
the event loop) and finds the line ends that close each batch; the batch leaves as one block of
bytes, and `decode_lines` splits and decodes it in a worker process (see `prepare`). No Python
object per line is made in the reading process. A line that is not JSON is counted, not fatal.
"""

from __future__ import annotations

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
# Compressed bytes per read; a 1 MiB read of an OFF dump inflates to ~6 MiB.
_READ_SIZE = 1 << 20
# At most this much inflated from one read at a time, whatever the compression ratio.
_INFLATE_LIMIT = 16 << 20
# What bytes.strip() strips: a line of only these is blank, not a record.
_BLANK = frozenset(b" \t\n\r\x0b\x0c")


def read_jsonl(path: Path, batch_size: int = 500) -> Generator[RawBatch, None, None]:
    """Yield batches of `batch_size` non-blank lines, each batch one `bytes` block of whole
    lines (undecoded; blank lines may be inside it and are skipped by `decode_lines`).

    Progress is counted in bytes of `path` (compressed bytes for a .gz), which is what makes an
    ETA possible on a dump whose line count is unknown. A truncated or corrupt gzip raises
    ExtractError after the whole batches before the damage.
    """
    try:
        raw: BinaryIO = path.open("rb", buffering=0)
    except OSError as exc:
        raise ExtractError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with raw:
        size = os.fstat(raw.fileno()).st_size
        buffer = b""
        start = scan = count = reported = 0
        try:
            for data in _chunks(raw, path):
                buffer = buffer[start:] + data if start < len(buffer) else data
                scan -= start
                start = 0
                while (end := buffer.find(b"\n", scan)) >= 0:
                    # A line is blank when all of it is whitespace; the first byte decides
                    # for all but whitespace-led lines, so a 20 KB line is never copied here.
                    if end > scan and (buffer[scan] not in _BLANK or buffer[scan:end].strip()):
                        count += 1
                    scan = end + 1
                    if count == batch_size:
                        position = raw.tell()
                        advance, reported = position - reported, position
                        yield RawBatch(records=buffer[start:scan], advance=advance, total=size)
                        start, count = scan, 0
        except OSError as exc:
            raise ExtractError(f"cannot read {path}: {exc.strerror or exc}") from exc
        yield RawBatch(records=buffer[start:], advance=size - reported, total=size)


def _chunks(raw: BinaryIO, path: Path) -> Iterator[bytes]:
    """The file's bytes, inflated if it is a gzip (one or more members, as `gzip` reads it).

    Sniffed rather than trusted from the extension: dumps get renamed."""
    first = raw.read(_READ_SIZE)
    if first[:2] != _GZIP_MAGIC:
        while first:
            yield first
            first = raw.read(_READ_SIZE)
        return
    pending = first
    inflate = zlib.decompressobj(wbits=31)
    try:
        while True:
            if not pending:
                pending = raw.read(_READ_SIZE)
                if not pending:
                    break
            data = inflate.decompress(pending, _INFLATE_LIMIT)
            pending = inflate.unconsumed_tail
            if data:
                yield data
            if inflate.eof:
                # Another member may follow; zero padding between members is allowed.
                rest = inflate.unused_data.lstrip(b"\x00")
                while len(rest) < 2 and (more := raw.read(_READ_SIZE)):
                    rest = (rest + more).lstrip(b"\x00")
                if not rest:
                    return
                if rest[:2] != _GZIP_MAGIC:
                    raise zlib.error("not a gzip member after the end of the last one")
                pending, inflate = rest, zlib.decompressobj(wbits=31)
    except zlib.error as exc:
        raise ExtractError(f"{path.name} is truncated or corrupt: {exc}") from exc
    raise ExtractError(
        f"{path.name} is truncated or corrupt: compressed file ended before the end-of-stream"
        " marker was reached"
    )


def decode_lines(block: bytes) -> Iterator[object]:
    """Each non-blank line of `block` as a JSON value, or `Reason.BAD_JSON`.

    orjson first (several times faster on full OFF objects); the standard module only for what
    orjson refuses, so that the few lines it is stricter about (integers beyond 64 bits, NaN)
    are read exactly as before rather than rejected.
    """
    for line in block.split(b"\n"):
        if not line.strip():
            continue
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError:
            try:
                yield json.loads(line)
            except (ValueError, RecursionError):
                # ValueError covers bad JSON and bad UTF-8 alike.
                yield Reason.BAD_JSON
