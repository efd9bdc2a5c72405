"""The orders service's answers, as its OpenAPI spec documents them."""

from __future__ import annotations

from datetime import datetime

from offsim_common.events import OrderKind, OrderStatus
from pydantic import BaseModel, Field


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
    total: int = Field(
        description="orders matching the filters, over every page (`before` and `offset` "
        "aside): counted as the orders are written, not over history"
    )
    limit: int
    offset: int
    orders: list[OrderDetail]
    next: str | None = Field(
        description="the path of the next (older) page, its filters kept; null on the last page"
    )


class ProductInfo(BaseModel):
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
    products: list[ProductInfo]
