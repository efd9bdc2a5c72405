"""The users service's answers, as its OpenAPI spec documents them."""

from __future__ import annotations

from datetime import datetime

from offsim_common.events import UserRegistered
from pydantic import BaseModel, Field


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
    units_wanted: int = Field(0, description="units the SSD's readings asked for, ever")
    units_short: int = Field(0, description="of those, the units that found no stock")


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
    quantity: int = Field(description="units ordered, to be back at capacity")
    order_id: int = Field(description="the restock order placed")


class ConsumeResult(BaseModel):
    ssd_id: int
    stock: list[ConsumedItem]
    restock: list[RestockItem] = Field(
        description="the restock orders this report made the backend place: products it left "
        "below their reorder point with no order on its way (the client orders nothing itself)"
    )
    duplicate: bool = Field(
        False, description="the report's `reading_id` was applied before: nothing changed"
    )
