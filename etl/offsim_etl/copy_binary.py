"""Rows -> Postgres binary COPY payloads, built in the parsing processes.

The loading process used to turn every row into COPY bytes itself (`copy_records_to_table`),
per value, while holding the only connection: with two cores that was the pipeline's serial
part. Encoding here, where the rows are made, leaves the loader one `copy_to_table` of ready
bytes per table and batch. The format is Postgres's own (`COPY ... FROM STDIN (FORMAT
binary)`): a header, then per row a field count and each field as length + bytes (-1 for
NULL), then a trailer.
"""

from __future__ import annotations

from collections.abc import Sequence
from struct import Struct
from typing import Any

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
NULL = b"\xff\xff\xff\xff"
# The type of each `load.PRODUCT_COLUMNS` column, as `products` declares it.
PRODUCT_TYPES = (
    "text",  # barcode
    "text",  # name
    "text",  # quantity
    "text",  # image_url
    "float8",  # energy_100g
    "float8",  # energy_serving
    "int2",  # nova_group
    "int4",  # nutriscore_score
    "text",  # nutriscore_grade
    "text",  # fat_level
    "text",  # saturated_fat_level
    "text",  # sugars_level
    "text",  # salt_level
    "text[]",  # categories
)
_TEXT_OID = 25

_LENGTH = Struct(">i")
_FLOAT8 = Struct(">id")
_INT2 = Struct(">ih")
_INT4 = Struct(">ii")
_FIELDS = Struct(">h")
# An array's header: dimensions, has-nulls flag, element type; one dimension: length, lower bound.
_ARRAY = Struct(">iiiii")
_EMPTY_ARRAY = _LENGTH.pack(12) + Struct(">iii").pack(0, 0, _TEXT_OID)


def encode_rows(rows: Sequence[Sequence[Any]], types: Sequence[str]) -> bytes:
    """`rows` (values in `types` order, None for NULL) as one binary COPY payload."""
    encoders = [_ENCODERS[kind] for kind in types]
    fields = _FIELDS.pack(len(types))
    parts = [HEADER]
    append = parts.append
    for row in rows:
        append(fields)
        for encode, value in zip(encoders, row, strict=True):
            if value is None:
                append(NULL)
            else:
                encode(value, append)
    append(TRAILER)
    return b"".join(parts)


def _text(value: str, append: Any) -> None:
    data = value.encode()
    append(_LENGTH.pack(len(data)))
    append(data)


def _float8(value: float, append: Any) -> None:
    append(_FLOAT8.pack(8, value))


def _int2(value: int, append: Any) -> None:
    append(_INT2.pack(2, value))


def _int4(value: int, append: Any) -> None:
    append(_INT4.pack(4, value))


def _text_array(values: Sequence[str], append: Any) -> None:
    if not values:
        append(_EMPTY_ARRAY)
        return
    elements = []
    for value in values:
        data = value.encode()
        elements.append(_LENGTH.pack(len(data)))
        elements.append(data)
    body = b"".join(elements)
    append(_LENGTH.pack(20 + len(body)))
    append(_ARRAY.pack(1, 0, _TEXT_OID, len(values), 1))
    append(body)


_ENCODERS = {
    "text": _text,
    "float8": _float8,
    "int2": _int2,
    "int4": _int4,
    "text[]": _text_array,
}
