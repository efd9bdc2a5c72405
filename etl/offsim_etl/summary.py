"""What a run did, as a dataclass for callers and as text for people."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class EtlSummary:
    """Counts for one run. `read` = `kept` + `duplicates` + rejections; `kept` = `inserted` +
    `updated` + `unchanged`."""

    source: str
    read: int = 0
    kept: int = 0
    # Same barcode again within one batch: the last one wins, the earlier ones count here.
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    # Kept products with a field set to NULL because its value was impossible, by field.
    cleared: Counter[str] = field(default_factory=Counter)
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    new_brands: int = 0
    # API only: the first page this run asked for (>1 when it resumed) and how many it read.
    start_page: int | None = None
    pages: int = 0
    # API only: whether the last page was reached (the stored position is then cleared).
    finished: bool = False
    seconds: float = 0.0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rejected"] = dict(self.rejected.most_common())
        data["cleared"] = dict(self.cleared.most_common())
        data["seconds"] = round(self.seconds, 3)
        return data

    def format(self) -> str:
        rate = self.read / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"offsim-etl: {self.source}: {self.read} records in {self.seconds:.1f} s ({rate:.0f}/s)"
        ]
        if self.start_page is not None:
            where = "resumed at" if self.start_page > 1 else "from"
            end = "last page reached" if self.finished else "more pages left, run again to go on"
            lines.append(f"  pages      {self.pages} ({where} page {self.start_page}; {end})")
        lines.append(f"  read       {self.read}")
        lines.append(
            f"  kept       {self.kept} (inserted {self.inserted}, updated {self.updated},"
            f" unchanged {self.unchanged}; {self.new_brands} new brands)"
        )
        if self.duplicates:
            lines.append(f"  duplicates {self.duplicates} (same barcode again in a batch)")
        lines.append(f"  rejected   {self.rejected_total}{_details(self.rejected)}")
        if self.cleared:
            lines.append(
                f"  cleared    {sum(self.cleared.values())} impossible values set to"
                f" NULL{_details(self.cleared)}"
            )
        return "\n".join(lines)


def _details(counts: Counter[str]) -> str:
    if not counts:
        return ""
    return " (" + ", ".join(f"{reason}: {n}" for reason, n in counts.most_common()) + ")"
