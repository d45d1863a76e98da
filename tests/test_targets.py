from __future__ import annotations

import pytest

from cnnvis_cli.errors import UserError
from cnnvis_cli.targets import Target, deepest_top, parse_targets, targets_for

NAMES = ["oak", "pine", "building", "dishwasher"]


def test_parse_accepts_keywords_names_and_indices() -> None:
    assert parse_targets(["pred", "true", "top3", "dishwasher", "1"], NAMES) == ["pred", "true", "top3", 3, 1]


def test_unknown_class_name_suggests_close_names() -> None:
    with pytest.raises(UserError, match=r"unknown target 'dishwashr'.*did you mean dishwasher"):
        parse_targets(["dishwashr"], NAMES)
    with pytest.raises(UserError, match=r"unknown target '9'"):
        parse_targets(["9"], NAMES)


def test_targets_are_distinct_with_merged_roles() -> None:
    parsed = parse_targets(["pred", "true", "top3", "building"], NAMES)
    assert targets_for(parsed, predicted=2, label=0, ranked=[2, 0, 1, 3]) == [
        Target(2, "pred+top1+named"), Target(0, "true+top2"), Target(1, "top3")]


def test_correct_prediction_gives_one_target_and_unlabelled_skips_true() -> None:
    parsed = parse_targets(["pred", "true"], NAMES)
    assert targets_for(parsed, predicted=1, label=1, ranked=[1]) == [Target(1, "pred+true")]
    assert targets_for(parsed, predicted=1, label=None, ranked=[1]) == [Target(1, "pred")]


def test_deepest_top() -> None:
    assert deepest_top(["pred", "top3", "top7", 2]) == 7
    assert deepest_top(["pred"]) == 0


def test_class_names_match_as_dataset_folders_do() -> None:
    names = ["Egyptian cat", "tabby", "pine-tree"]
    assert parse_targets(["egyptian cat", "Egyptian_cat", "TABBY", "pine tree", "pine_tree"], names) == [0, 0, 1, 2, 2]


def test_a_name_of_two_classes_asks_for_the_index() -> None:
    from cnnvis_cli.models import imagenet_class_names

    names = imagenet_class_names()  # 264 is Cardigan, the corgi; 474 a cardigan, the sweater
    assert parse_targets(["Cardigan", "cardigan", "474"], names) == [264, 474, 474]
    with pytest.raises(UserError, match=r"target 'CARDIGAN' names 2 classes \(264, 474\); give the one you mean by"):
        parse_targets(["CARDIGAN"], names)


def test_a_contrast_is_its_own_target_and_only_for_a_wrong_prediction() -> None:
    wrong = targets_for(["pred", "true", "contrast"], predicted=2, label=0, ranked=[2, 0, 1])
    assert [(t.class_index, t.role, t.against) for t in wrong] == [(2, "pred", None), (0, "true", None),
                                                                   (2, "contrast", 0)]
    assert wrong[2].name(["circle", "square", "triangle"]) == "triangle vs circle"
    assert not wrong[2].explains_prediction  # its maps are no class's: not among the predicted-class maps
    assert targets_for(["contrast"], predicted=1, label=1, ranked=[1, 0]) == []  # right: nothing to contrast
    assert targets_for(["contrast"], predicted=1, label=None, ranked=[1, 0]) == []  # unlabelled
    assert parse_targets(["pred", "contrast"], ["a", "b"]) == ["pred", "contrast"]
