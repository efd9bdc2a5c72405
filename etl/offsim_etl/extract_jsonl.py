"""Stream an OFF JSONL dump (gzip or plain) in blocks of whole lines, in constant memory.

The full dump is tens of GB of one product per line, so it is read in large chunks and never
held whole. The reading process only inflates (ISA-L, which releases the GIL, so it runs beside
the event loop) and finds the line ends that close each batch; the batch leaves as one block of
bytes, and `decode_lines` splits and decodes it in a worker process (see `prepare`). No Python
object per line is made in the reading process. A line that is not JSON is counted, not fatal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import orjson
from isal import isal_zlib

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

    Sniffed rather than trusted from the extension: dumps get renamed. Inflated with ISA-L
    (python-isal, same format as zlib, about twice as fast): this is the one step no second
    process can share, so its speed bounds the whole load of a .gz dump.
    """
    pending = raw.read(_READ_SIZE)
    if pending[:2] != _GZIP_MAGIC:
        while pending:
            yield pending
            pending = raw.read(_READ_SIZE)
        return
    inflate = isal_zlib.decompressobj(wbits=31)
    try:
        while True:
            if not pending:
                pending = raw.read(_READ_SIZE)
            ended = not pending
            if ended:  # the file ended: whatever the inflater still holds
                data = inflate.flush()
            else:
                data = inflate.decompress(pending, _INFLATE_LIMIT)
                pending = inflate.unconsumed_tail
            if data:
                yield data
            if inflate.eof:
                # Another member may follow; zero padding between members is allowed.
                rest = (inflate.unused_data + pending).lstrip(b"\x00")
                while len(rest) < 2 and (more := raw.read(_READ_SIZE)):
                    rest = (rest + more).lstrip(b"\x00")
                if not rest:
                    return
                if rest[:2] != _GZIP_MAGIC:
                    raise isal_zlib.error("not a gzip member after the end of the last one")
                pending, inflate = rest, isal_zlib.decompressobj(wbits=31)
            elif ended and not data:
                raise isal_zlib.error(
                    "compressed file ended before the end-of-stream marker was reached"
                )
    except isal_zlib.error as exc:
        raise ExtractError(f"{path.name} is truncated or corrupt: {exc}") from exc


class _Fields(msgspec.Struct):
    """The top-level fields `transform` reads; any other key is skipped by the parser (its
    syntax still checked), never turned into Python objects. null and absent read alike, as
    they do in `transform`."""

    code: Any = None
    lang: Any = None
    product_name: Any = None
    generic_name: Any = None
    quantity: Any = None
    image_url: Any = None
    selected_images: Any = None
    nutriments: Any = None
    nova_group: Any = None
    nutriscore_data: Any = None
    nutriscore_score: Any = None
    nutriscore_grade: Any = None
    nutrition_grades: Any = None
    nutrition_grade_fr: Any = None
    nutrient_levels: Any = None
    categories_tags: Any = None
    brands_tags: Any = None
    brands: Any = None
    states_tags: Any = None


_read_fields = msgspec.json.Decoder(_Fields).decode
_as_dict = msgspec.structs.asdict
# orjson reads integers beyond these as floats; the few lines with such a code take the full path.
_INT_RANGE = range(-(2**63), 2**64)


def decode_lines(block: bytes) -> Iterator[object]:
    """Each non-blank line of `block` as a JSON value (an object as a dict of the fields
    `transform` reads), or `Reason.BAD_JSON`.

    A full OFF object is ~200 keys and ~20 KB, and building all of it was most of the ETL's
    time; msgspec reads just the fields above, three times faster. It is used only where it
    provably reads what `decode_full` reads: valid UTF-8 (it does not check skipped strings),
    an object with a text `product_name` (otherwise `transform` looks at every
    `product_name_xx` key), and a code orjson would read the same. Every other line (not an
    object, not JSON, NaN, a lone surrogate...) goes through `decode_full`.
    """
    for line in block.split(b"\n"):
        if not line.strip():
            continue
        try:
            if line.isascii() or _is_utf8(line):
                fields = _read_fields(line)
                name, code = fields.product_name, fields.code
                if (
                    isinstance(name, str)
                    and name.replace("\x00", "").strip()
                    and (type(code) is not int or code in _INT_RANGE)
                ):
                    yield _as_dict(fields)
                    continue
        except (msgspec.DecodeError, RecursionError):
            pass
        yield decode_full(line)


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode()
    except UnicodeDecodeError:
        return False
    return True


def decode_full(line: bytes) -> object:
    """One line as a JSON value, every key of it, or `Reason.BAD_JSON`.

    orjson first (several times faster on full OFF objects); the standard module only for what
    orjson refuses, so that the few lines it is stricter about (NaN, lone surrogates) are read
    exactly as before rather than rejected.
    """
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            return json.loads(line)
        except (ValueError, RecursionError):
            # ValueError covers bad JSON and bad UTF-8 alike.
            return Reason.BAD_JSON
