"""Errors that end a run with a one-line message instead of a traceback."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .summary import EtlSummary


class EtlError(Exception):
    """A run cannot start or cannot go on; `summary` holds what was loaded before it stopped."""

    def __init__(self, message: str, summary: EtlSummary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


class DatabaseError(EtlError):
    """The database is unreachable, not migrated, or busy with another ETL run."""


class ExtractError(EtlError):
    """The source failed: the API after its retries, or a corrupt file."""
