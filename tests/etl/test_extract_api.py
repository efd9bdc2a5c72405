"""The API extractor's pure parts: query parsing, the stop rule, the throttle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from offsim_etl.extract_api import QueryError, SearchQuery, Throttle, is_last_page, parse_query

PAGES = Path(__file__).parent / "pages"


def test_parse_query_bare_word_is_a_category() -> None:
    assert parse_query("chocolates") == (
        ("categories_tags_en", "chocolates"),
        ("sort_by", "created_t"),
    )


def test_parse_query_filters_pass_through_and_keep_their_sort() -> None:
    assert parse_query("brands_tags=ferrero&countries_tags_en=france|italy&sort_by=code") == (
        ("brands_tags", "ferrero"),
        ("countries_tags_en", "france|italy"),
        ("sort_by", "code"),
    )


def test_parse_query_none_is_everything_in_a_stable_order() -> None:
    assert parse_query(None) == (("sort_by", "created_t"),)


@pytest.mark.parametrize("query", ["page=3", "brands_tags=x&page_size=5", "fields=code"])
def test_parse_query_reserved_parameter_is_refused(query: str) -> None:
    with pytest.raises(QueryError, match="must not set"):
        parse_query(query)


def test_search_query_key_names_filters_and_page_size_not_fields() -> None:
    loose = SearchQuery.build("https://world.openfoodfacts.org/", "b=2&a=1", 50)
    strict = SearchQuery.build("https://world.openfoodfacts.org", "a=1&b=2", 50, strict=True)

    assert (
        loose.key
        == strict.key
        == ("https://world.openfoodfacts.org/api/v2/search?a=1&b=2&page_size=50&sort_by=created_t")
    )
    assert SearchQuery.build("https://world.openfoodfacts.org", "a=1&b=2", 100).key != loose.key
    assert "states_tags" in dict(strict.params(1))["fields"]
    assert "states_tags" not in dict(loose.params(1))["fields"]


@pytest.mark.parametrize(
    ("name", "page", "last"),
    [
        # count 32, page_size "20" (a string, as older OFF answered): 2 pages.
        ("page-009.json", 1, False),
        ("page-009.json", 2, True),
        # count "2187" (a string), page_size 150: page 15 is the last.
        ("page-010.json", 14, False),
        ("page-010.json", 15, True),
    ],
)
def test_is_last_page_on_recorded_responses(name: str, page: int, last: bool) -> None:
    body = json.loads((PAGES / name).read_bytes())

    assert is_last_page(page, body, requested_size=100) is last


def test_is_last_page_empty_products_ends_even_without_count() -> None:
    assert is_last_page(7, {"products": []}, requested_size=100)
    assert not is_last_page(7, {"products": [{}]}, requested_size=100)


def test_throttle_spaces_calls_by_the_rate() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    throttle = Throttle(10, clock=lambda: now[0], sleep=sleep)  # one call per 6 s
    throttle.wait()
    throttle.wait()
    now[0] += 2.0
    throttle.wait()
    now[0] += 60.0
    throttle.wait()

    assert slept == [6.0, 4.0]


def test_throttle_refuses_a_zero_rate() -> None:
    with pytest.raises(ValueError, match="OFF_SEARCH_RATE"):
        Throttle(0)
