"""What can go wrong, in the domain's words: every service raises these, and each transport maps
them in one place (HTTP in `http.py`, `nats.micro` replies in `endpoints.py`).

Each error carries a machine-readable `code`, a message for people and `details`, the problem
with each field by its path; the `code`s are part of the API (the JSON error bodies).
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class DomainError(Exception):
    """A request the domain refuses; never a bug (those are plain exceptions)."""

    code = "internal_error"

    def __init__(self, message: str, details: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def body(self) -> dict:
        return {"error": self.code, "message": self.message, "details": self.details}


class Invalid(DomainError):
    """The request itself is wrong: a missing, malformed or out-of-range field."""

    code = "bad_request"


class Unauthenticated(DomainError):
    """No credential, or one nobody issued."""

    code = "unauthorized"


class Forbidden(DomainError):
    """A valid credential acting for someone else."""

    code = "forbidden"


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    """The request contradicts what is stored (a taken email, an open restock order)."""

    code = "conflict"


class KeyReused(DomainError):
    """An Idempotency-Key sent again with a different request."""

    code = "idempotency_key_reused"


class Unavailable(DomainError):
    """A dependency does not answer: the same request may succeed later."""

    code = "unavailable"


def database_unavailable(exc: BaseException) -> Unavailable:
    return Unavailable(
        "the database is unavailable; retry later",
        {"database": str(exc) or type(exc).__name__},
    )


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer's body, as `DomainError.body` writes it."""

    error: str = Field(description="a machine-readable code, e.g. bad_request, not_found")
    message: str
    details: dict[str, str] = Field(description="the problem with each field, by field path")
