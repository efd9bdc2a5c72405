"""One typed model per payload: HTTP request bodies and NATS messages.

Requests are validated strictly (``"3"`` is not a quantity) so that a client mistake is a 400
that names the field, never a 500 further down.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)

MAC_RE = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$", re.IGNORECASE)
# Deliberately loose: the address must have one @ and a dotted domain; deliverability is not ours
# to check.
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
MAX_ORDER_QUANTITY = 100

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Barcode = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Id = Annotated[StrictInt, Field(gt=0, le=2**63 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)


class OrderStatus(StrEnum):
    PENDING = "pending"
    SHIPPED = "shipped"
    COMPLETED = "completed"


# --- HTTP request bodies (kept compatible with the original's) ---------------------------------


class NewUser(_Strict):
    first_name: Name
    last_name: Name
    email: Annotated[
        str,
        StringConstraints(
            strip_whitespace=True, to_lower=True, max_length=254, pattern=EMAIL_PATTERN
        ),
    ]
    password: Annotated[str, StringConstraints(min_length=8, max_length=256)]


class NewDevice(_Strict):
    mac_address: str

    @field_validator("mac_address")
    @classmethod
    def _canonical_mac(cls, value: str) -> str:
        """Store one spelling per device, so `AA-BB-..` and `aa:bb:..` collide as they should."""
        if not MAC_RE.match(value.strip()):
            raise ValueError("must be a MAC address such as 00:1a:2b:3c:4d:5e")
        digits = re.sub(r"[^0-9a-f]", "", value.strip().lower())
        return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


class RegisterRequest(_Strict):
    user: NewUser
    devices: Annotated[list[NewDevice], Field(min_length=1, max_length=10)]


class OrderRequest(_Strict):
    ssd_id: Id
    barcode: Barcode
    quantity: Annotated[StrictInt, Field(ge=1, le=MAX_ORDER_QUANTITY)]


class ConsumeRequest(_Strict):
    """What an SSD reports it saw used: `quantity` units of `barcode`, or of each watched product
    (a random share of up to `quantity`) when no barcode is given."""

    barcode: Barcode | None = None
    quantity: Annotated[StrictInt, Field(ge=1, le=MAX_ORDER_QUANTITY)] = 1


# --- NATS messages ------------------------------------------------------------------------------


class OrderEvent(BaseModel):
    """An order as carried on orders.pending / orders.shipped / orders.completed.

    `product_id` repeats `barcode` under the original's name so its consumers keep working; either
    is accepted on input.
    """

    model_config = ConfigDict(frozen=True)

    id: Id
    ssd_id: Id
    barcode: Barcode
    product_id: str | None = None
    quantity: Annotated[int, Field(ge=1)]
    status: OrderStatus
    timestamp: datetime

    @model_validator(mode="before")
    @classmethod
    def _barcode_from_product_id(cls, data: object) -> object:
        if isinstance(data, dict) and "barcode" not in data and "product_id" in data:
            data = {**data, "barcode": data["product_id"]}
        return data

    @model_validator(mode="after")
    def _mirror_product_id(self) -> OrderEvent:
        if self.product_id != self.barcode:
            object.__setattr__(self, "product_id", self.barcode)
        return self

    def advanced(self, status: OrderStatus, timestamp: datetime) -> OrderEvent:
        return self.model_copy(update={"status": status, "timestamp": timestamp})

    @property
    def msg_id(self) -> str:
        """JetStream de-duplication id: one message per order and status."""
        return f"order-{self.id}-{self.status.value}"


class RandomOrderRequest(BaseModel):
    """Body of an orders.random request. Empty in the original; an `ssd_id` asks the orders
    service for a product that SSD watches."""

    ssd_id: int | None = None


class RandomSsdReply(BaseModel):
    ssd_id: int


class RandomBarcodeReply(BaseModel):
    barcode: str


class Device(BaseModel):
    id: int
    mac_address: str


class UserRegistered(BaseModel):
    id: int
    first_name: str
    last_name: str
    email: str
    devices: list[Device]
