"""Where the model looks, grouped and averaged: k-means, the silhouette, the number of groups, the files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cnnvis_cli.patterns import (
    MAP_SIDE,
    MAPS_FILE,
    MAPS_HEADER,
    MapCollector,
    MapEntry,
    find_patterns,
    finished_maps,
    group_maps,
    kmeans,
    mean_maps,
    silhouette,
)


def spot_maps(corners: list[int], seed: int = 0) -> torch.Tensor:
    """16 x 16 maps with a blob in one of four corners (0: top left, 1: top right, 2: bottom left, 3: bottom
    right) plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand((len(corners), MAP_SIDE, MAP_SIDE), generator=generator) * 0.1
    for row, corner in enumerate(corners):
        top, left = (corner // 2) * 10, (corner % 2) * 10
        maps[row, top:top + 5, left:left + 5] += 1
    return maps


def test_collected_maps_are_streamed_and_read_back_exactly_in_the_order_asked(tmp_path: Path) -> None:
    from cnnvis_cli.run_dir import RunDir

    maps = torch.rand((3, 56, 56), generator=torch.Generator().manual_seed(0))
    entries = [MapEntry("gradcam", index, f"{index}.png", "oak", "elm", correct, f"heatmaps/{index}.png")
               for index, correct in ((9, False), (4, True), (6, None))]
    with RunDir(tmp_path).csv_stream(MAPS_FILE, MAPS_HEADER) as stream:
        collector = MapCollector(stream)
        collector.add(maps, entries)
    shrunk = F.adaptive_avg_pool2d(maps[:, None], MAP_SIDE)[:, 0]
    read = finished_maps(tmp_path)
    assert sorted(read) == [4, 6, 9]
    for row, entry in enumerate(entries):
        (found_entry, found_map), = read[entry.index]
        assert found_entry == entry and torch.equal(found_map, shrunk[row])

    collector.sort({4: 0, 6: 1, 9: 2})  # the selection's order
    stacked, in_order = collector.stacked("gradcam")
    assert [entry.index for entry in in_order] == [4, 6, 9] and torch.equal(stacked, shrunk[[1, 2, 0]])
    (tmp_path / MAPS_FILE).write_text("technique,index\n")
    assert finished_maps(tmp_path) == {}  # other columns: nothing reused


def test_well_separated_groups_are_found_and_counted() -> None:
    corners = [0] * 9 + [3] * 6 + [2] * 4
    labels = group_maps(spot_maps(corners), None, seed=0)
    assert labels.tolist() == [0] * 9 + [1] * 6 + [2] * 4  # three groups, numbered by size
    assert group_maps(spot_maps(corners), 2, seed=0).unique().tolist() == [0, 1]  # a count that is set wins
    assert group_maps(spot_maps([1, 1]), None, seed=0).tolist() == [0, 0]  # too few maps to split


def test_kmeans_and_silhouette_agree_with_hand_computed_values() -> None:
    points = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
    labels = kmeans(points, 2, seed=3)
    assert labels[0] == labels[1] != labels[2] == labels[3]
    # a = 1 for every point; b = mean of 10 and sqrt(101)
    b = (10 + 101 ** 0.5) / 2
    assert silhouette(points, labels) == pytest.approx((b - 1) / b)
    assert silhouette(points, torch.zeros(4, dtype=torch.long)) == 0.0


def test_mean_maps_per_key() -> None:
    maps = torch.stack([torch.full((2, 2), value) for value in (1.0, 3.0, 10.0)])
    means = mean_maps(maps, [("a",), ("a",), ("b",)], minimum=1)
    assert float(means[("a",)][0][0, 0]) == 2.0 and means[("a",)][1] == 2
    assert ("b",) not in mean_maps(maps, [("a",), ("a",), ("b",)], minimum=2)


def test_find_patterns_writes_mean_maps_and_the_members_of_each_group(tmp_path: Path) -> None:
    corners = [0] * 5 + [3] * 4
    collector = MapCollector()
    entries = [MapEntry("gradcam", index, f"s{index}", "oak" if corner == 0 else "elm",
                        "building" if index % 2 else ("oak" if corner == 0 else "elm"), bool(index % 2 == 0),
                        f"heatmaps/gradcam/{index}.png") for index, corner in enumerate(corners)]
    collector.add(torch.nn.functional.interpolate(spot_maps(corners)[:, None], size=64)[:, 0], entries)

    def write(path: str, data: bytes) -> str:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
        return path

    found = find_patterns(collector, ["gradcam"], ["groups", "confusions", "classes"], None, 0, write)["gradcam"]
    assert [group["size"] for group in found["groups"]] == [5, 4]
    assert found["groups"][0]["peak"][0] < 0.5 and found["groups"][1]["peak"][0] > 0.5  # left, then right
    assert all((tmp_path / group["image"]).read_bytes()[:4] == b"\x89PNG" for group in found["groups"])
    with (tmp_path / "patterns" / "groups.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["group"]) for row in rows] == [1] * 5 + [2] * 4
    assert {(item["true"], item["predicted"], item["count"]) for item in found["confusions"]} == {
        ("oak", "building", 2), ("elm", "building", 2)}
    oak = next(item for item in found["classes"] if item["class"] == "oak")
    assert oak["correct"]["count"] == 3 and oak["wrong"]["count"] == 2


@pytest.mark.slow
def test_a_demo_run_with_every_analysis_writes_them_and_shows_them(tmp_path: Path) -> None:
    from helpers import run_config

    from cnnvis_cli.pipeline import run

    result = run(run_config("dataset.limit=150", "technique=[gradcam,eigencam]",
                            "analysis=[groups,confusions,classes]"), tmp_path)
    patterns = result.summary["patterns"]
    assert set(patterns) == {"gradcam", "eigencam"}
    selected = result.summary["selection"]["selected"]
    assert sum(group["size"] for group in patterns["gradcam"]["groups"]) == selected  # one map per sample
    for found in patterns.values():
        for item in found["groups"] + found["confusions"]:
            assert (tmp_path / item["image"]).is_file()
    page = (tmp_path / "report.html").read_text()
    assert "What the failures have in common" in page
    assert page.count('class="group"') == sum(len(found["groups"]) for found in patterns.values())
    with (tmp_path / "patterns" / "groups.csv").open(newline="") as file:
        assert len(list(csv.DictReader(file))) == 2 * selected


def test_an_unknown_analysis_names_the_close_one() -> None:
    from helpers import run_config

    from cnnvis_cli.errors import UserError

    with pytest.raises(UserError, match="unknown analysis 'group'; did you mean groups"):
        run_config("analysis=[group]")


@pytest.mark.slow
def test_on_the_shipped_demo_the_maps_that_follow_the_cue_form_groups_of_their_own(tmp_path: Path) -> None:
    """The demo model predicts a class when that class's mark sits in its corner; the groups of Grad-CAM's
    maps must find the corners, each holding the wrong predictions of the class whose mark is there."""
    from helpers import run_config

    from cnnvis_cli.demo.scene import CLASS_NAMES
    from cnnvis_cli.pipeline import run

    result = run(run_config("technique=gradcam", "analysis=[groups]", "render.panels=false", "report=false"),
                 tmp_path)
    groups = result.summary["patterns"]["gradcam"]["groups"]
    wrong = result.summary["selection"]["matched"]["incorrect"]  # 90 on the demo test split
    in_corners = 0
    for group in groups:
        x, y = group["peak"]
        if not ((x < 0.3 or x > 0.7) and (y < 0.3 or y > 0.7)):
            assert group["wrong"] <= group["size"] / 2  # a group that looks elsewhere is mostly right
            continue
        mark_of = CLASS_NAMES[(x > 0.5) + 2 * (y > 0.5)]  # marks: 0 top left, 1 top right, 2 bottom left, 3 ...
        predicted = [member["predicted"] for member in group["members"]]
        assert predicted.count(mark_of) >= 0.85 * len(predicted)  # measured: 0.86 to 1.0
        assert group["wrong"] >= 0.9 * group["size"]
        in_corners += group["wrong"]
    assert in_corners >= 0.85 * wrong  # measured: 88 of 90
