from __future__ import annotations

from cnnvis_cli.names import class_key, matching_classes


def test_case_underscores_and_dashes_do_not_matter() -> None:
    assert class_key(" Egyptian_cat ") == class_key("egyptian-cat") == class_key("Egyptian  cat") == "egyptian cat"


def test_an_exact_spelling_wins_over_a_loose_one() -> None:
    assert matching_classes("Oak", ["oak", "Oak"]) == [1]
    assert matching_classes("OAK", ["oak", "Oak"]) == [0, 1]
    assert matching_classes("elm", ["oak"]) == []
