"""Stream OFF's `food` Parquet export in record batches, in constant memory.

The export is a few GB for ~4 million products, so it is read with `ParquetFile.iter_batches`:
only the columns the mapping needs, `batch_size` rows at a time. The reading process only
decodes Parquet (in Arrow's C++); `decode_record_batch` turns a batch into OFF objects shaped like
the JSONL ones in a worker process (see `prepare`), so the Parquet source shares `transform`, its
rejects and its summary with the JSONL source.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .batch import RawBatch
from .errors import ExtractError
from .off_parquet import FOOD_COLUMNS, REQUIRED_COLUMNS
from .transform import Reason

# The nutriments `transform` reads; the ~100 others never leave Arrow.
_NUTRIMENTS = ("energy-kcal", "nova-group")
_LEVEL_TAG = re.compile(r"en:(fat|saturated-fat|sugars|salt)-in-(low|moderate|high)-quantity")


def read_parquet(path: Path, batch_size: int = 500) -> Generator[RawBatch, None, None]:
    """Yield one RecordBatch of at most `batch_size` rows per RawBatch; progress in rows."""
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ExtractError(
            f"{path.name} is not a readable Parquet file: {_first_line(exc)}"
        ) from exc
    names = set(parquet.schema_arrow.names)
    missing = [column for column in REQUIRED_COLUMNS if column not in names]
    if missing:
        raise ExtractError(f"{path.name} is not an OFF food export: no column {', '.join(missing)}")
    columns = [name for name in FOOD_COLUMNS.names if name in names]
    total = parquet.metadata.num_rows
    with parquet:
        try:
            for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
                yield RawBatch(records=batch, advance=batch.num_rows, total=total)
        except (pa.ArrowException, OSError) as exc:
            raise ExtractError(f"{path.name} is truncated or corrupt: {_first_line(exc)}") from exc


def decode_record_batch(batch: pa.RecordBatch) -> Iterator[object]:
    """Each row as an OFF JSONL-style object (`product_name`, `product_name_xx`, a flat
    `nutriments`, `nutrient_levels`), or `Reason.INVALID` for a row that cannot be read."""
    nutriments = _nutriments(batch)
    rows = batch.drop_columns([n for n in ("nutriments",) if n in batch.schema.names])
    for row, nutrients in zip(rows.to_pylist(), nutriments, strict=True):
        try:
            yield _off_object(row, nutrients)
        except (TypeError, ValueError, KeyError, AttributeError):
            yield Reason.INVALID


def _off_object(row: dict[str, Any], nutriments: dict[str, float]) -> dict[str, Any]:
    product = {key: value for key, value in row.items() if value is not None}
    for field in ("product_name", "generic_name"):
        entries = product.pop(field, None)
        if isinstance(entries, str):  # a flatter export: already the main-language text
            product[field] = entries
            continue
        for entry in entries or ():
            lang, text = entry.get("lang"), entry.get("text")
            if lang == "main":
                product[field] = text
            elif isinstance(lang, str):
                product[f"{field}_{lang}"] = text
    product["nutriments"] = nutriments
    levels = {}
    for tag in product.pop("nutrient_levels_tags", None) or ():
        if isinstance(tag, str) and (match := _LEVEL_TAG.fullmatch(tag)):
            levels[match[1]] = match[2]
    product["nutrient_levels"] = levels
    return product


def _nutriments(batch: pa.RecordBatch) -> list[dict[str, float]]:
    """Per row, the wanted nutriments as JSONL keys (`energy-kcal_100g`), picked out in Arrow so
    that only those few values become Python objects."""
    result: list[dict[str, float]] = [{} for _ in range(batch.num_rows)]
    if "nutriments" not in batch.schema.names:
        return result
    column = batch.column("nutriments")
    entries = column.flatten()
    wanted = pc.is_in(entries.field("name"), value_set=pa.array(_NUTRIMENTS))
    wanted = pc.fill_null(wanted, False)
    parents = pc.filter(pc.list_parent_indices(column), wanted).to_pylist()
    picked = {
        part: pc.filter(entries.field(part), wanted).to_pylist()
        for part in ("name", "value", "100g", "serving")
    }
    for i, parent in enumerate(parents):
        name, nutrients = picked["name"][i], result[parent]
        for part, suffix in (("100g", "_100g"), ("serving", "_serving")):
            if (value := picked[part][i]) is not None:
                nutrients[name + suffix] = _from_float32(value)
        # JSONL's unsuffixed nova-group; the exporter keeps it as the value or the per-100 g one.
        if name == "nova-group":
            value = picked["value"][i] if picked["value"][i] is not None else picked["100g"][i]
            if value is not None:
                nutrients[name] = _from_float32(value)
    return result


def _from_float32(value: float) -> float:
    """The shortest decimal that is this float32 (539.0 stays 539.0, 52.3 is not 52.29999923),
    so a Parquet number maps to what the same product's JSON says."""
    if not isinstance(value, float):
        return value
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.unpack("f", struct.pack("f", candidate))[0] == value:
            return candidate
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
