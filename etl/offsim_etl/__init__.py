"""offsim ETL: loads Open Food Facts products (ODbL) into the offsim database.

`run_etl` is what the launcher calls; `offsim-etl` is the same thing from a shell.
"""

from .errors import DatabaseError, EtlError, ExtractError
from .pipeline import SOURCES, run_etl, sample_path
from .summary import EtlSummary

__all__ = [
    "SOURCES",
    "DatabaseError",
    "EtlError",
    "EtlSummary",
    "ExtractError",
    "run_etl",
    "sample_path",
]
