"""The validated field types that requests and events share: what a barcode, an id or a
name may be, once, so that a client mistake is a 400 naming the field, never a 500 further
down."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints

# Six octets, separated by ':' or '-' or not at all; stored canonical as aa:bb:cc:dd:ee:ff.
MAC_PATTERN = r"^[0-9A-Fa-f]{2}([:-]?[0-9A-Fa-f]{2}){5}$"
# What the stripping of names removes: Unicode White_Space, spelled out so that the validator
# and every client reading the spec's patterns (JSON Schema regexes differ on `\s`) agree.
BLANK = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Postgres text cannot hold NUL; refusing it here makes it a 400, not a database error.
NO_NUL = r"^[^\x00]*$"
# At least one visible character: names are stripped, so a blank one would end up empty.
NOT_BLANK = rf"^[^\x00]*[^\x00{BLANK}][^\x00]*$"
# Deliberately loose: one @ and a dotted domain, no blanks or control characters; deliverability
# is not ours to check.
_EMAIL_CHAR = rf"[^@\x00-\x1f\x7f{BLANK}]"
EMAIL_PATTERN = rf"^{_EMAIL_CHAR}+@{_EMAIL_CHAR}+\.{_EMAIL_CHAR}+$"
MAX_ORDER_QUANTITY = 100
# Units one reading may report: a household uses a few at a time; more is a faulty device.
MAX_READING_UNITS = 100

Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=NOT_BLANK)
]
Barcode = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=NOT_BLANK)
]
Id = Annotated[StrictInt, Field(ge=1, le=2**63 - 1)]
# A device's own id for a reading (a counter, a UUID): printable ASCII, no blanks.
ReadingId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")
]


class Strict(BaseModel):
    """Validated strictly: `"3"` is not a quantity."""

    model_config = ConfigDict(strict=True, frozen=True)
