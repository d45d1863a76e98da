from __future__ import annotations

from rich.progress import Progress

from cnnvis_cli.explain import _BarShare


def test_the_bar_moves_through_a_techniques_share_of_a_batch_and_never_back() -> None:
    bar = Progress(disable=True)
    task = bar.add_task("heatmaps", total=16)
    share = _BarShare(bar, task, start=8.0, share=4.0)  # the second of two techniques on a batch of 8 images
    positions = []
    for done, total in [(10, 40), (20, 40), (5, 20), (40, 40)]:  # (5, 20): a batch split after running out of memory
        share(done, total)
        positions.append(bar.tasks[0].completed)
    assert positions == [9.0, 10.0, 10.0, 12.0]
