"""OFF's `food` Parquet export: the columns the ETL reads, and how OFF builds them from a product.

OFF publishes its database as Parquet (Hugging Face dataset `openfoodfacts/product-database`,
`food.parquet`, built by `openfoodfacts-exports`). Its columns differ from the JSONL objects:

- language fields (`product_name`, `generic_name`) are lists of `{lang, text}` structs, the
  product's main language under `lang = "main"`, the others under their 2-letter code;
- `nutriments` is a list of `{name, value, 100g, serving, unit, prepared_*}` structs (floats are
  float32) instead of a flat `energy-kcal_100g`-style object;
- `nutrient_levels` exists only as `nutrient_levels_tags` (`en:fat-in-moderate-quantity`);
- no `image_url`, `selected_images`, `nutriscore_data` or `nutrition_grades`.

`FOOD_COLUMNS` is the subset of that schema the ETL reads, with OFF's types. `food_row` and
`write_food_parquet` do OFF's conversion for one JSONL object; the tests and the benchmark use
them to write a Parquet file from the bundled sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

LANGUAGE_FIELD = pa.list_(pa.struct([pa.field("lang", pa.string()), pa.field("text", pa.string())]))
NUTRIMENTS = pa.list_(
    pa.struct(
        [
            pa.field("name", pa.string()),
            pa.field("value", pa.float32()),
            pa.field("100g", pa.float32()),
            pa.field("serving", pa.float32()),
            pa.field("unit", pa.string()),
            pa.field("prepared_value", pa.float32()),
            pa.field("prepared_100g", pa.float32()),
            pa.field("prepared_serving", pa.float32()),
            pa.field("prepared_unit", pa.string()),
        ]
    )
)
FOOD_COLUMNS = pa.schema(
    [
        pa.field("brands", pa.string()),
        pa.field("brands_tags", pa.list_(pa.string())),
        pa.field("categories_tags", pa.list_(pa.string())),
        pa.field("code", pa.string()),
        pa.field("generic_name", LANGUAGE_FIELD),
        pa.field("lang", pa.string()),
        pa.field("nova_group", pa.int32()),
        pa.field("nutrient_levels_tags", pa.list_(pa.string())),
        pa.field("nutriments", NUTRIMENTS),
        pa.field("nutriscore_grade", pa.string()),
        pa.field("nutriscore_score", pa.int32()),
        pa.field("product_name", LANGUAGE_FIELD),
        pa.field("quantity", pa.string()),
        pa.field("states_tags", pa.list_(pa.string())),
    ]
)
# Without these a file is not an OFF food export at all.
REQUIRED_COLUMNS = ("code", "product_name")

# OFF's exporter splits `nutriments` keys on these endings, longest first.
_NUTRIMENT_ENDINGS = (
    ("_prepared_100g", "prepared_100g"),
    ("_prepared_serving", "prepared_serving"),
    ("_prepared_unit", "prepared_unit"),
    ("_prepared_value", "prepared_value"),
    ("_unit", "unit"),
    ("_value", "value"),
    ("_100g", "100g"),
    ("_serving", "serving"),
)
_TEXT_PARTS = ("unit", "prepared_unit")


def food_row(product: Mapping[str, Any]) -> dict[str, Any]:
    """One OFF JSONL object as a row of `FOOD_COLUMNS`, converted the way OFF's exporter does."""
    return {
        "brands": _str(product.get("brands")),
        "brands_tags": _strings(product.get("brands_tags")),
        "categories_tags": _strings(product.get("categories_tags")),
        "code": None if product.get("code") is None else str(product["code"]),
        "generic_name": _language_field(product, "generic_name"),
        "lang": _str(product.get("lang")),
        "nova_group": _int(product.get("nova_group")),
        "nutrient_levels_tags": _strings(product.get("nutrient_levels_tags")),
        "nutriments": _nutriments(product.get("nutriments")),
        "nutriscore_grade": _str(product.get("nutriscore_grade")),
        "nutriscore_score": _int(product.get("nutriscore_score")),
        "product_name": _language_field(product, "product_name"),
        "quantity": _str(product.get("quantity")),
        "states_tags": _strings(product.get("states_tags")),
    }


def write_food_parquet(
    path: Path, products: Iterable[Mapping[str, Any]], row_group_size: int = 10_000
) -> int:
    """Write `products` (OFF JSONL objects) as an OFF food Parquet file; returns the row count."""
    written = 0
    with pq.ParquetWriter(path, FOOD_COLUMNS) as writer:
        rows: list[dict[str, Any]] = []
        for product in products:
            rows.append(food_row(product))
            if len(rows) == row_group_size:
                writer.write_table(pa.Table.from_pylist(rows, schema=FOOD_COLUMNS))
                written += len(rows)
                rows = []
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=FOOD_COLUMNS))
            written += len(rows)
    return written


def _language_field(product: Mapping[str, Any], name: str) -> list[dict[str, str]]:
    """`name` as "main", then every `name_xx` (two-letter suffix, non-empty) under its code."""
    entries = []
    if main := _str(product.get(name)):
        entries.append({"lang": "main", "text": main})
    for key, value in product.items():
        if key.startswith(f"{name}_"):
            lang = key.rsplit("_", maxsplit=1)[-1]
            if len(lang) == 2 and isinstance(value, str) and value:
                entries.append({"lang": lang, "text": value})
    return entries


def _nutriments(nutriments: object) -> list[dict[str, Any]] | None:
    if not isinstance(nutriments, Mapping):
        return None
    parsed: dict[str, dict[str, Any]] = {}
    for key, value in nutriments.items():
        for ending, part in _NUTRIMENT_ENDINGS:
            if key.endswith(ending):
                name = key[: -len(ending)]
                parsed.setdefault(name, {})[part] = (
                    _str(value) if part in _TEXT_PARTS else _float(value)
                )
                break
    return [{"name": name, **parts} for name, parts in parsed.items()]


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _strings(value: object) -> list[str] | None:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else None


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _int(value: object) -> int | None:
    number = _float(value)
    return int(number) if number is not None and number.is_integer() else None
