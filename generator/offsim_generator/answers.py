"""What the generator reads of the services' answers, validated: only the fields it uses (a
tolerant reader), so a service may add to its answers without breaking the generator, and an
answer missing what it needs is a failed event, not a KeyError."""

from __future__ import annotations

from typing import TypeVar

from offsim_common.events import Device
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class Registered(BaseModel):
    """POST /api/register, 201."""

    id: int
    devices: list[Device]
    token: str


class StockUsed(BaseModel):
    barcode: str
    consumed: int


class Restock(BaseModel):
    barcode: str
    quantity: int


class Consumed(BaseModel):
    """POST /api/ssds/{id}/consume, 200."""

    stock: list[StockUsed]
    restock: list[Restock]


class Placed(BaseModel):
    """POST /api/orders, 201."""

    id: int


class UnexpectedAnswer(ValueError):
    pass


def read(model: type[M], body: dict, what: str) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise UnexpectedAnswer(
            f"{what}: unexpected answer: {exc.errors(include_url=False)}"
        ) from None
