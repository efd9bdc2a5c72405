"""What the generator reads of the services' answers, validated: only the fields it uses (a
tolerant reader), so a service may add to its answers without breaking the generator, and an
answer missing what it needs is a failed event, not a KeyError."""

from __future__ import annotations

from typing import TypeVar

from offsim_common.events import Device
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class Registered(BaseModel):
    """POST /api/register, 201. Each device lists the barcodes it watches (`watched`): what
    its readings may name."""

    id: int
    devices: list[Device]
    token: str


class SyntheticUser(BaseModel):
    id: int
    devices: list[Device]


class SyntheticUsers(BaseModel):
    """POST /api/synthetic-users, 201: the users in the request's order."""

    users: list[SyntheticUser]


class StockUsed(BaseModel):
    barcode: str
    consumed: int


class Restock(BaseModel):
    barcode: str
    quantity: int


class Consumed(BaseModel):
    """POST /api/ssds/{id}/consume, 200. `restock`: the restock orders the backend placed
    because of this reading (the SSD places none itself)."""

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
