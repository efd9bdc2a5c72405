"""One OFF product object -> one `Product` row, or the reason it cannot be one.

OFF objects span ten years of schema changes (see docs/etl.md): numbers arrive as strings,
`nova_group` lives at the top level or in `nutriments`, old objects only carry
`nutrition_grades`, `fields=`-filtered search results have no `*_tags` at all. Every accessor
here therefore assumes nothing about types, and `transform` never raises on bad input: a record
either maps or is rejected with a `Reason` the summary counts.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    """Why a record was skipped; the values are what the summary prints."""

    BAD_JSON = "bad JSON line"
    NOT_AN_OBJECT = "not a JSON object"
    NO_CODE = "no code"
    BAD_CODE = "implausible barcode"
    NO_NAME = "no name"
    ABSURD_NUMBER = "absurd number"
    INVALID = "unreadable record"
    # --strict only: the original Go ETL's filter.
    INCOMPLETE = "strict: states not complete"
    STRICT_NOVA = "strict: NOVA group not 1-4"
    STRICT_NUTRISCORE = "strict: Nutri-Score not -15..40"


# The states the original ETL required before it kept a product.
COMPLETE_STATES = frozenset(
    {
        "en:product-name-completed",
        "en:brands-completed",
        "en:quantity-completed",
        "en:front-photo-selected",
        "en:nutrition-facts-completed",
        "en:checked",
    }
)
# The original's "sane values": NOVA 1-4 and the 2017 Nutri-Score range.
STRICT_NUTRISCORE = (-15, 40)
# Any Nutri-Score either algorithm can produce (2017: -15..40, 2023: -17..55); beyond it the
# number is not a Nutri-Score at all.
ANY_NUTRISCORE = (-17, 55)
# Pure fat has 900 kcal/100 g, so anything above is impossible; between that and MAX_KCAL_ANY it is
# almost always kJ typed into the kcal field (real sample: a saucisson at "1766 kcal"); beyond
# MAX_KCAL_ANY it is garbage.
MAX_KCAL_100G = 900.0
MAX_KCAL_ANY = 10_000.0

LEVELS = frozenset({"low", "moderate", "high"})
GRADES = frozenset({"a", "b", "c", "d", "e"})
# GTIN-8/12/13/14 plus the shorter store codes OFF accepts; never all zeros (a placeholder).
_BARCODE = re.compile(r"\d{4,14}")
_LANG_NAME = re.compile(r"product_name_[a-z]{2}")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True, slots=True)
class Product:
    """One row of `products`, its brand tags, and which source fields were dropped as wrong."""

    barcode: str
    name: str
    quantity: str | None = None
    image_url: str | None = None
    energy_100g: float | None = None
    energy_serving: float | None = None
    nova_group: int | None = None
    nutriscore_score: int | None = None
    nutriscore_grade: str | None = None
    fat_level: str | None = None
    saturated_fat_level: str | None = None
    sugars_level: str | None = None
    salt_level: str | None = None
    categories: tuple[str, ...] = ()
    brands: tuple[str, ...] = ()
    cleared: tuple[str, ...] = ()

    def row(self) -> tuple[Any, ...]:
        """The values for `load.PRODUCT_COLUMNS`, in that order."""
        return (
            self.barcode,
            self.name,
            self.quantity,
            self.image_url,
            self.energy_100g,
            self.energy_serving,
            self.nova_group,
            self.nutriscore_score,
            self.nutriscore_grade,
            self.fat_level,
            self.saturated_fat_level,
            self.sugars_level,
            self.salt_level,
            list(self.categories),
        )


class _Absurd(Exception):
    """A number no real product can have: the whole record is suspect."""


def transform(record: object, *, strict: bool = False) -> Product | Reason:
    """Map one OFF product object; never raises on bad data."""
    if not isinstance(record, Mapping):
        return Reason.NOT_AN_OBJECT
    try:
        return _transform(record, strict)
    except _Absurd:
        return Reason.ABSURD_NUMBER


def _transform(record: Mapping[str, Any], strict: bool) -> Product | Reason:
    barcode = _barcode(record.get("code"))
    if isinstance(barcode, Reason):
        return barcode
    name = _name(record)
    if name is None:
        return Reason.NO_NAME

    nutriments = _mapping(record.get("nutriments"))
    cleared: list[str] = []

    energy_100g = _number(nutriments.get("energy-kcal_100g"), 0.0, MAX_KCAL_ANY)
    energy_serving = _number(nutriments.get("energy-kcal_serving"), 0.0, MAX_KCAL_ANY)
    if energy_100g is not None and energy_100g > MAX_KCAL_100G:
        # kJ in the kcal field: the per-serving value was computed from the same slip.
        cleared.append("energy_100g")
        energy_100g = None
        if energy_serving is not None:
            cleared.append("energy_serving")
            energy_serving = None

    nova = _first_present(record.get("nova_group"), nutriments.get("nova-group"))
    nova_group = _nova(nova)
    if nova is not None and nova_group is None:
        cleared.append("nova_group")

    score_source = _first_present(
        _mapping(record.get("nutriscore_data")).get("score"), record.get("nutriscore_score")
    )
    nutriscore_score = _integer(score_source, *ANY_NUTRISCORE)

    if strict:
        states = _tags(record.get("states_tags"))
        if not COMPLETE_STATES.issubset(states):
            return Reason.INCOMPLETE
        if nova_group is None:
            return Reason.STRICT_NOVA
        if nutriscore_score is None or not (
            STRICT_NUTRISCORE[0] <= nutriscore_score <= STRICT_NUTRISCORE[1]
        ):
            return Reason.STRICT_NUTRISCORE

    levels = _mapping(record.get("nutrient_levels"))
    return Product(
        barcode=barcode,
        name=name,
        quantity=_text(record.get("quantity")),
        image_url=_image_url(record),
        energy_100g=energy_100g,
        energy_serving=energy_serving,
        nova_group=nova_group,
        nutriscore_score=nutriscore_score,
        nutriscore_grade=_grade(record),
        fat_level=_level(levels.get("fat")),
        saturated_fat_level=_level(levels.get("saturated-fat")),
        sugars_level=_level(levels.get("sugars")),
        salt_level=_level(levels.get("salt")),
        categories=_unique(_tags(record.get("categories_tags"))),
        brands=_brands(record),
        cleared=tuple(cleared),
    )


def _barcode(value: object) -> str | Reason:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    code = _text(value)
    if code is None:
        return Reason.NO_CODE
    if not _BARCODE.fullmatch(code) or not code.strip("0"):
        return Reason.BAD_CODE
    return code


def _name(record: Mapping[str, Any]) -> str | None:
    """`product_name`, else the name in the product's own language, English, any language, and
    last the generic name: real objects often leave `product_name` empty but fill
    `product_name_fr` (e.g. Nutella 8000500082379 in the sample)."""
    for candidate in _names(record):
        if (name := _text(candidate)) is not None:
            return name
    return None


def _names(record: Mapping[str, Any]) -> Iterator[object]:
    # Lazy: scanning the ~200 keys of a full object is only worth it when the usual fields fail.
    yield record.get("product_name")
    lang = record.get("lang")
    if isinstance(lang, str):
        yield record.get(f"product_name_{lang}")
    yield record.get("product_name_en")
    yield from (value for key, value in record.items() if _LANG_NAME.fullmatch(key))
    yield record.get("generic_name")


def _image_url(record: Mapping[str, Any]) -> str | None:
    """`image_url`, else the front image OFF itself selected (`selected_images.front.display`).

    Dump lines carry only `images` (revision numbers, no URL); building a URL from those would
    mean re-implementing OFF's path rules, so those products get no image."""
    url = _url(record.get("image_url"))
    if url is not None:
        return url
    front = _mapping(_mapping(record.get("selected_images")).get("front"))
    display = _mapping(front.get("display"))
    lang = record.get("lang")
    for key in (lang, "en", *display.keys()):
        if isinstance(key, str) and (url := _url(display.get(key))) is not None:
            return url
    return None


def _nova(value: object) -> int | None:
    """1-4 from an int or a string ("4", "4.0"); any other value is not a NOVA group."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return int(number) if number in (1, 2, 3, 4) else None


def _grade(record: Mapping[str, Any]) -> str | None:
    """The first a-e grade among the current and the older field names; OFF writes 'unknown' or
    'not-applicable' when it has none."""
    for value in (
        record.get("nutriscore_grade"),
        _mapping(record.get("nutriscore_data")).get("grade"),
        record.get("nutrition_grades"),
        record.get("nutrition_grade_fr"),
    ):
        grade = _text(value)
        if grade is not None and grade.lower() in GRADES:
            return grade.lower()
    return None


def _brands(record: Mapping[str, Any]) -> tuple[str, ...]:
    """`brands_tags` without OFF's language-less "xx:" prefix, so "xx:intermarche" and
    "intermarche" are one brand; `fields=`-filtered results only have the `brands` text, which
    we slug the way OFF builds its tags."""
    tags = _tags(record.get("brands_tags"))
    if tags:
        return _unique(tag.removeprefix("xx:").lower() for tag in tags)
    text = _text(record.get("brands"))
    if text is None:
        return ()
    return _unique(_slug(part) for part in text.split(","))


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return _NOT_SLUG.sub("-", ascii_text.lower()).strip("-")


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(value for value in values if value))


def _tags(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [tag for item in value if (tag := _text(item)) is not None]


def _level(value: object) -> str | None:
    return value if isinstance(value, str) and value in LEVELS else None


def _text(value: object) -> str | None:
    """A stripped, non-empty string; Postgres text cannot hold NUL, so it goes."""
    if not isinstance(value, str):
        return None
    text = value.replace("\x00", "").strip()
    return text or None


def _url(value: object) -> str | None:
    url = _text(value)
    if url is not None and url.startswith(("https://", "http://")):
        return url
    return None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _first_present(*values: object) -> object:
    for value in values:
        if value is not None and value != "":
            return value
    return None


def _number(value: object, low: float, high: float) -> float | None:
    """A float in [low, high]; absent or empty is None; anything else is absurd."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip().replace(",", ".")
        if not value:
            return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _Absurd from None
    if not math.isfinite(number) or not low <= number <= high:
        raise _Absurd
    return number


def _integer(value: object, low: int, high: int) -> int | None:
    number = _number(value, low, high)
    if number is None:
        return None
    if not number.is_integer():
        raise _Absurd
    return int(number)
