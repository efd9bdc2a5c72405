"""transform() over real OFF objects from the bundled sample, plus the ways records go bad."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from offsim_etl.transform import Product, Reason, transform


def mapped(record: object, *, strict: bool = False) -> Product:
    result = transform(record, strict=strict)
    assert isinstance(result, Product), result
    return result


def test_transform_full_record_maps_every_column(sample_records: dict[str, Any]) -> None:
    product = mapped(sample_records["3017620422003"])

    assert product == Product(
        barcode="3017620422003",
        name="Nutella",
        quantity="400 g",
        image_url="https://images.openfoodfacts.org/images/products/301/762/042/2003/front_en.633.400.jpg",
        energy_100g=539.0,
        energy_serving=80.8,
        nova_group=4,
        nutriscore_score=26,
        nutriscore_grade="e",
        fat_level="high",
        saturated_fat_level="high",
        sugars_level="high",
        salt_level="low",
        categories=(
            "en:breakfasts",
            "en:spreads",
            "en:sweet-spreads",
            "fr:pates-a-tartiner",
            "en:hazelnut-spreads",
            "en:chocolate-spreads",
            "en:cocoa-and-hazelnuts-spreads",
        ),
        brands=("nutella", "ferrero"),
    )


def test_transform_string_nova_group_becomes_int(sample_records: dict[str, Any]) -> None:
    record = sample_records["26042459"]
    assert record["nova_group"] == "4"

    assert mapped(record).nova_group == 4


def test_transform_nova_group_only_in_nutriments_is_read(sample_records: dict[str, Any]) -> None:
    record = copy.deepcopy(sample_records["26042459"])
    del record["nova_group"]
    record["nutriments"]["nova-group"] = "3"

    assert mapped(record).nova_group == 3


@pytest.mark.parametrize("nova", [0, 5, "7", "unknown", 2.5])
def test_transform_nova_group_outside_1_to_4_is_null_and_counted(
    sample_records: dict[str, Any], nova: object
) -> None:
    record = copy.deepcopy(sample_records["26042459"])
    record["nova_group"] = nova

    product = mapped(record)

    assert product.nova_group is None
    assert product.cleared == ("nova_group",)


def test_transform_nutrition_grades_only_record_gets_its_grade(
    sample_records: dict[str, Any],
) -> None:
    record = sample_records["0000000001663"]
    assert "nutriscore_grade" not in record and record["nutrition_grades"] == "b"

    assert mapped(record).nutriscore_grade == "b"


def test_transform_nutrition_grade_fr_is_the_last_fallback(sample_records: dict[str, Any]) -> None:
    record = copy.deepcopy(sample_records["0000000001663"])
    del record["nutrition_grades"]
    record["nutrition_grade_fr"] = "D"

    assert mapped(record).nutriscore_grade == "d"


def test_transform_unknown_grade_is_null(sample_records: dict[str, Any]) -> None:
    record = sample_records["0000000000017"]
    assert record["nutriscore_grade"] == "unknown"

    assert mapped(record).nutriscore_grade is None


def test_transform_record_without_image_url_has_no_image(sample_records: dict[str, Any]) -> None:
    record = sample_records["0000000001663"]
    assert "image_url" not in record and "selected_images" not in record

    product = mapped(record)

    assert product.image_url is None
    assert product.name == "Crème dessert chocolat"


def test_transform_selected_front_image_stands_in_for_image_url(
    sample_records: dict[str, Any],
) -> None:
    record = sample_records["4006599000632"]
    assert "image_url" not in record

    assert mapped(record).image_url == (
        "https://static.openfoodfacts.org/images/products/400/659/900/0632/front_fr.7.400.jpg"
    )


def test_transform_fields_filtered_record_maps_name_and_brands(
    sample_records: dict[str, Any],
) -> None:
    record = sample_records["05179565"]
    assert sorted(record) == ["brands", "categories", "code", "product_name", "stores", "url"]

    product = mapped(record)

    assert (product.barcode, product.name) == ("05179565", "nescafe cappuccino")
    # No brands_tags in a fields= result: the brands text is slugged as OFF does ("nescafé").
    assert product.brands == ("nescafe",)
    assert product.categories == ()
    assert product.energy_100g is None and product.nutriscore_grade is None


def test_transform_empty_product_name_falls_back_to_a_language_name(
    sample_records: dict[str, Any],
) -> None:
    record = sample_records["8000500082379"]
    assert record["product_name"] == ""

    assert mapped(record).name == "Nutella"


def test_transform_language_less_brand_prefix_is_dropped(sample_records: dict[str, Any]) -> None:
    assert sample_records["0000101209159"]["brands_tags"] == ["xx:bovetti"]

    assert mapped(sample_records["0000101209159"]).brands == ("bovetti",)


def test_transform_kj_in_kcal_field_is_cleared_not_rejected(sample_records: dict[str, Any]) -> None:
    record = sample_records["3263858674428"]
    assert record["nutriments"]["energy-kcal_100g"] == 1749  # a saucisson: that is kJ

    product = mapped(record)

    assert product.energy_100g is None
    assert "energy_100g" in product.cleared


def test_transform_strict_keeps_what_the_original_kept(sample_records: dict[str, Any]) -> None:
    kept = sorted(
        code
        for code, record in sample_records.items()
        if isinstance(transform(record, strict=True), Product)
    )

    # Only 4 of the 1049 real objects are complete, checked, NOVA 1-4 and Nutri-Score -15..40.
    assert kept == ["3017620422003", "3023470010017", "3760020502218", "5410188031072"]


def test_transform_strict_rejects_incomplete_states(sample_records: dict[str, Any]) -> None:
    record = sample_records["5449000000996"]  # Coca-Cola: not "en:checked"
    assert "en:checked" not in record["states_tags"]

    assert isinstance(transform(record), Product)
    assert transform(record, strict=True) is Reason.INCOMPLETE


def test_transform_strict_rejects_missing_nova(sample_records: dict[str, Any]) -> None:
    record = copy.deepcopy(sample_records["3017620422003"])
    del record["nova_group"], record["nutriments"]["nova-group"]

    assert transform(record, strict=True) is Reason.STRICT_NOVA


def test_transform_strict_rejects_nutriscore_outside_original_range(
    sample_records: dict[str, Any],
) -> None:
    record = copy.deepcopy(sample_records["3017620422003"])
    record["nutriscore_data"]["score"] = 45  # a 2023 score: fine by default, not for --strict

    assert mapped(record).nutriscore_score == 45
    assert transform(record, strict=True) is Reason.STRICT_NUTRISCORE


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ([1, 2], Reason.NOT_AN_OBJECT),
        ("3017620422003", Reason.NOT_AN_OBJECT),
        ({"product_name": "No code"}, Reason.NO_CODE),
        ({"code": "  ", "product_name": "Blank code"}, Reason.NO_CODE),
        ({"code": "000", "product_name": "Placeholder"}, Reason.BAD_CODE),
        ({"code": "0000000000000", "product_name": "All zeros"}, Reason.BAD_CODE),
        ({"code": "356470063137903", "product_name": "15 digits"}, Reason.BAD_CODE),
        ({"code": "30176204abc", "product_name": "Letters"}, Reason.BAD_CODE),
        ({"code": "3017620422003"}, Reason.NO_NAME),
        ({"code": "3017620422003", "product_name": " \x00 "}, Reason.NO_NAME),
        (
            {
                "code": "3017620422003",
                "product_name": "x",
                "nutriments": {"energy-kcal_100g": "lots"},
            },
            Reason.ABSURD_NUMBER,
        ),
        (
            {"code": "3017620422003", "product_name": "x", "nutriments": {"energy-kcal_100g": -5}},
            Reason.ABSURD_NUMBER,
        ),
        (
            {
                "code": "3017620422003",
                "product_name": "x",
                "nutriments": {"energy-kcal_serving": 1e12},
            },
            Reason.ABSURD_NUMBER,
        ),
        (
            {
                "code": "3017620422003",
                "product_name": "x",
                "nutriments": {"energy-kcal_100g": "NaN"},
            },
            Reason.ABSURD_NUMBER,
        ),
        (
            {"code": "3017620422003", "product_name": "x", "nutriscore_score": 99},
            Reason.ABSURD_NUMBER,
        ),
        (
            {"code": "3017620422003", "product_name": "x", "nutriscore_score": 2.5},
            Reason.ABSURD_NUMBER,
        ),
    ],
)
def test_transform_bad_record_is_rejected_with_its_reason(record: object, reason: Reason) -> None:
    assert transform(record) is reason


def test_transform_odd_but_valid_types_are_normalised() -> None:
    product = mapped(
        {
            "code": 3017620422003,
            "product_name": "  Nu\x00tella ",
            "nutriments": {"energy-kcal_100g": "539,0", "nova-group": 4.0},
            "nutriscore_score": "26",
            "nutrient_levels": {"fat": "very high", "salt": "low"},
            "brands_tags": ["ferrero", "ferrero", 7, ""],
            "categories_tags": "en:spreads",
            "image_url": "javascript:alert(1)",
            "nutriscore_data": [],
        }
    )

    assert (product.barcode, product.name) == ("3017620422003", "Nutella")
    assert (product.energy_100g, product.nova_group, product.nutriscore_score) == (539.0, 4, 26)
    assert (product.fat_level, product.salt_level) == (None, "low")
    assert product.brands == ("ferrero",)
    assert product.categories == ()
    assert product.image_url is None
