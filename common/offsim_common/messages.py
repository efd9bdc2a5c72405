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
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)

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

Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=NOT_BLANK)
]
Barcode = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=NOT_BLANK)
]
Id = Annotated[StrictInt, Field(ge=1, le=2**63 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)


class OrderKind(StrEnum):
    ORDER = "order"
    RESTOCK = "restock"


class OrderStatus(StrEnum):
    PENDING = "pending"
    SHIPPED = "shipped"
    COMPLETED = "completed"
    # Terminal: the supplier rejected the order; nothing ships, the stock is unchanged.
    CANCELLED = "cancelled"


# --- HTTP request bodies (kept compatible with the original's) ---------------------------------


class NewUser(_Strict):
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


class NewDevice(_Strict):
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


class RegisterRequest(_Strict):
    user: NewUser
    devices: Annotated[list[NewDevice], Field(min_length=1, max_length=10)]


class OrderRequest(_Strict):
    ssd_id: Id
    barcode: Barcode
    quantity: Annotated[StrictInt, Field(ge=1, le=MAX_ORDER_QUANTITY)]
    kind: OrderKind = Field(
        OrderKind.ORDER,
        description="`order` (the default): any number may be open for one SSD and product; "
        "`restock`: placed by the SSD's own restocking, at most one open per SSD and product "
        "(a second is a 409)",
    )


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
    quantity: Annotated[int, Field(ge=1, le=MAX_ORDER_QUANTITY)]
    status: OrderStatus
    timestamp: AwareDatetime = Field(description="when the order reached this status")
    created_at: AwareDatetime | None = Field(None, description="when the order was placed")

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
        """JetStream de-duplication id: one message per order and status. The placing time
        keeps it unique when a wiped database hands out ids again to a NATS that remembers."""
        placed = f"-{self.created_at.timestamp():.6f}" if self.created_at else ""
        return f"order-{self.id}{placed}-{self.status.value}"


class RandomOrderRequest(BaseModel):
    """Body of an orders.random request. Empty in the original; an `ssd_id` asks the orders
    service for a product that SSD watches."""

    ssd_id: Id | None = None


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


# --- HTTP responses (documented in the OpenAPI specs; handlers answer through them) -------------


class ErrorBody(BaseModel):
    error: str = Field(description="a machine-readable code, e.g. bad_request, not_found")
    message: str
    details: dict[str, str] = Field(description="the problem with each field, by field path")


class Health(BaseModel):
    status: str = Field(description="ok, or unavailable")
    database: str | None = None
    nats: str | None = None
    details: dict[str, str] | None = Field(None, description="what failed, when unavailable")


class RegisterResult(UserRegistered):
    """The registered user and devices, with the user's bearer token."""

    token: str = Field(
        description="the user's bearer token (`Authorization: Bearer <token>`): shown once, "
        "stored only as a hash"
    )


class StockItem(BaseModel):
    barcode: str
    product_name: str
    image_url: str | None = None
    quantity: int
    reorder_point: int
    capacity: int


class SsdDetail(BaseModel):
    id: int
    mac_address: str
    stock: list[StockItem]


class UserDetail(BaseModel):
    id: int
    first_name: str
    last_name: str
    email: str
    created_at: datetime
    ssds: list[SsdDetail]


class ConsumedItem(BaseModel):
    barcode: str
    product_name: str | None
    quantity: int = Field(description="stock left")
    reorder_point: int
    capacity: int
    consumed: int
    on_order: bool = Field(
        description="an order for it is pending or shipped (a cancelled one "
        "is no longer on its way)"
    )


class RestockItem(BaseModel):
    barcode: str
    quantity: int = Field(description="units to order to be back at capacity")


class ConsumeResult(BaseModel):
    ssd_id: int
    stock: list[ConsumedItem]
    restock: list[RestockItem] = Field(
        description="products below their reorder point with no order on its way"
    )


class Order(BaseModel):
    id: int
    ssd_id: int
    barcode: str
    quantity: int
    kind: OrderKind
    status: OrderStatus
    created_at: datetime


class Transition(BaseModel):
    status: OrderStatus
    at: datetime


class OrderDetail(Order):
    shipped_at: datetime | None
    completed_at: datetime | None
    cancelled_at: datetime | None = None
    product_name: str | None = None
    transitions: list[Transition]


class OrderPage(BaseModel):
    total: int
    limit: int
    offset: int
    orders: list[OrderDetail]


class Product(BaseModel):
    barcode: str
    name: str
    quantity: str | None
    image_url: str | None
    energy_100g: float | None
    energy_serving: float | None
    nova_group: int | None
    nutriscore_score: int | None
    nutriscore_grade: str | None
    fat_level: str | None
    saturated_fat_level: str | None
    sugars_level: str | None
    salt_level: str | None
    categories: list[str]
    brands: list[str]


class ProductPage(BaseModel):
    total: int
    limit: int
    offset: int
    products: list[Product]
