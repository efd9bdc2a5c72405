"""The HTTP request bodies of the services' APIs (kept compatible with the original's): what
clients such as the generator send, validated strictly."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, StrictInt, StringConstraints, field_validator

from .events import OrderKind
from .fields import (
    EMAIL_PATTERN,
    MAC_PATTERN,
    MAX_ORDER_QUANTITY,
    MAX_READING_UNITS,
    NO_NUL,
    Barcode,
    Id,
    Name,
    ReadingId,
    Strict,
)


class NewUser(Strict):
    first_name: Name
    last_name: Name
    email: Annotated[
        str,
        StringConstraints(max_length=254, pattern=EMAIL_PATTERN),
    ]
    password: Annotated[str, StringConstraints(min_length=8, max_length=256, pattern=NO_NUL)]

    @field_validator("email")
    @classmethod
    def _lower_email(cls, value: str) -> str:
        """One account per address, whatever its case (after validation: lowering can lengthen
        a string, and the documented limits apply to what the client sent)."""
        return value.lower()


class NewDevice(Strict):
    mac_address: Annotated[
        str, StringConstraints(strip_whitespace=True, pattern=MAC_PATTERN),
        Field(description="e.g. 00:1a:2b:3c:4d:5e"),
    ]  # fmt: skip

    @field_validator("mac_address")
    @classmethod
    def _canonical_mac(cls, value: str) -> str:
        """Store one spelling per device, so `AA-BB-..` and `aa:bb:..` collide as they should."""
        digits = re.sub(r"[^0-9a-f]", "", value.lower())
        return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


class RegisterRequest(Strict):
    user: NewUser
    devices: Annotated[list[NewDevice], Field(min_length=1, max_length=10)]


class OrderRequest(Strict):
    ssd_id: Id
    barcode: Barcode
    quantity: Annotated[StrictInt, Field(ge=1, le=MAX_ORDER_QUANTITY)]
    kind: OrderKind = Field(
        OrderKind.ORDER,
        description="`order` (the default): any number may be open for one SSD and product; "
        "`restock`: placed by the SSD's own restocking, at most one open per SSD and product "
        "(a second is a 409)",
    )


class ConsumeRequest(Strict):
    """What an SSD reports it saw used: `quantity` units of `barcode`, or of each watched product
    (a random share of up to `quantity`) when no barcode is given: the HTTP form of a reading."""

    barcode: Barcode | None = None
    quantity: Annotated[StrictInt, Field(ge=1, le=MAX_READING_UNITS)] = 1
    reading_id: ReadingId | None = Field(
        None,
        description="the device's own id for this report: sent again, it changes nothing (without "
        "a barcode, it draws the same units, and each product's reading id derives from it and "
        "the barcode); without one, every report is a new reading",
    )
