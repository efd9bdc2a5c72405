"""offsim ETL: loads Open Food Facts products (ODbL) into the offsim database.

`run_etl` is what the launcher calls; `offsim-etl` is the same thing from a shell.

The names below are imported on first use: the parsing processes import
`offsim_etl.prepare` and its few modules only, not asyncpg, requests and tqdm.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import DatabaseError, EtlError, ExtractError
    from .pipeline import SOURCES, run_etl, sample_path
    from .summary import EtlSummary

_EXPORTS = {
    "DatabaseError": "errors",
    "EtlError": "errors",
    "ExtractError": "errors",
    "EtlSummary": "summary",
    "SOURCES": "pipeline",
    "run_etl": "pipeline",
    "sample_path": "pipeline",
}

__all__ = [
    "SOURCES",
    "DatabaseError",
    "EtlError",
    "EtlSummary",
    "ExtractError",
    "run_etl",
    "sample_path",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
