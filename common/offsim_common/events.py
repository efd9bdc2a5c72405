"""The messages on NATS subjects (subjects.py names them): what the services publish,
consume and answer on orders.random."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from .fields import MAX_ORDER_QUANTITY, MAX_READING_UNITS, Barcode, Id, ReadingId


class OrderKind(StrEnum):
    ORDER = "order"
    RESTOCK = "restock"


class OrderStatus(StrEnum):
    PENDING = "pending"
    SHIPPED = "shipped"
    COMPLETED = "completed"
    # Terminal: the supplier rejected the order; nothing ships, the stock is unchanged.
    CANCELLED = "cancelled"


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
    watched: list[str] = Field(
        default_factory=list,
        description="barcodes of the products the SSD watches (what its readings may name)",
    )


class SsdReading(BaseModel):
    """What an SSD saw used, on ssds.<ssd_id>.readings (or MQTT topic ssds/<ssd_id>/readings):
    `quantity` units of `barcode`. `reading_id` is the device's own id for the reading, unique
    per SSD: a reading sent or delivered again under the same id is applied once."""

    model_config = ConfigDict(strict=True, frozen=True)

    ssd_id: Id
    barcode: Barcode
    quantity: Annotated[int, Field(ge=1, le=MAX_READING_UNITS, description="units used")]
    reading_id: ReadingId
    timestamp: AwareDatetime | None = Field(None, description="when the device saw it used")


class UserRegistered(BaseModel):
    id: int
    first_name: str
    last_name: str
    email: str
    devices: list[Device]
