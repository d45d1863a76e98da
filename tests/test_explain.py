from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
from helpers import count_passes, run_config
from rich.progress import Progress

from cnnvis_cli import pipeline
from cnnvis_cli.explain import RenderOptions, _BarShare, _panel_content
from cnnvis_cli.inference import Predictions
from cnnvis_cli.selection import Case
from cnnvis_cli.targets import targets_for


def test_the_bar_moves_through_a_techniques_share_of_a_batch_and_never_back() -> None:
    bar = Progress(disable=True)
    task = bar.add_task("heatmaps", total=16)
    share = _BarShare(bar, task, start=8.0, share=4.0)  # the second of two techniques on a batch of 8 images
    positions = []
    for done, total in [(10, 40), (20, 40), (5, 20), (40, 40)]:  # (5, 20): a batch split after running out of memory
        share(done, total)
        positions.append(bar.tasks[0].completed)
    assert positions == [9.0, 10.0, 10.0, 12.0]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes()
            for sub in ("heatmaps", "panels", "maps") for path in sorted((folder / sub).rglob("*")) if path.is_file()}


def test_panels_take_no_pass_of_the_model_and_threads_change_no_byte(tmp_path: Path, monkeypatch) -> None:
    passes = count_passes(monkeypatch)
    settings = ["dataset.limit=24", "technique=[gradcam,gradient_x_input]", "targets=[pred,true,3]",
                "save_maps=true", "cache=null"]
    outputs = {}
    for name, extra in [("main thread", ["render.threads=0"]), ("three threads", ["render.threads=3"]),
                        ("no panels", ["render.threads=0", "render.panels=false"])]:
        pipeline.run(run_config(*settings, *extra), tmp_path / name)
        outputs[name] = files_of(tmp_path / name)
    with_panels, threaded, without = passes
    assert with_panels == threaded == without  # a panel's probabilities come from the inference stage
    assert outputs["three threads"] == outputs["main thread"]
    assert len([name for name in outputs["main thread"] if name.startswith("panels/")]) > 0
    assert {name: data for name, data in outputs["main thread"].items() if not name.startswith("panels/")} \
        == outputs["no panels"]


def test_a_panel_shows_the_probabilities_and_ranks_the_inference_stage_kept() -> None:
    predictions = Predictions(
        indices=np.array([7]), sample_ids=["x.png"], labels=np.array([1]), predicted=np.array([2]),
        confidence=np.array([0.6]), margin=np.array([0.3]), entropy=np.array([0.5]), loss=np.array([3.0]),
        topk_classes=np.array([[2, 0]]), topk_probs=np.array([[0.6, 0.3]]),
        tracked_classes=np.array([[1, 3]]), tracked_probs=np.array([[0.05, 0.02]]), tracked_ranks=np.array([[4, 5]]))
    case = Case(row=0, reasons=("incorrect",))
    rows = [(0, target) for target in targets_for(["pred", "true", 3], 2, 1, [2, 0])]
    technique = SimpleNamespace(name="gradcam")
    pictures = np.zeros((len(rows), 8, 8, 3), dtype=np.uint8)
    options = RenderOptions("jet", 0.5, save_maps=False, panels=True, zoom=False, topn=2)
    drawn = [(technique, pictures, None, [("", False)] * len(rows))]
    content = _panel_content(case, 7, rows, 0, drawn, np.zeros((8, 8, 3), np.uint8),
                             predictions, list("abcd"), None, None, options, [])
    assert [(tile.class_name, tile.rank, tile.probability) for tile in content.tiles] == \
        [("c", 1, 0.6), ("b", 4, 0.05), ("d", 5, 0.02)]
    assert content.top == [("c", 0.6, False, 1), ("a", 0.3, False, 2), ("b", 0.05, True, 4)]  # the true class last
