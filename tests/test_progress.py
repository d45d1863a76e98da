from __future__ import annotations

from types import SimpleNamespace

from cnnvis_cli.progress import RateColumn


def rate(completed: float, elapsed: float | None, speed: float | None = None, finished: bool = False) -> str:
    task = SimpleNamespace(fields={"unit": "images"}, finished=finished, speed=speed, completed=completed,
                           elapsed=elapsed)
    return RateColumn().render(task).plain


def test_the_rate_is_shown_also_when_a_stage_was_too_quick_to_sample() -> None:
    assert rate(40, 2.0) == "20.0 images/s"  # no speed sampled: completed over elapsed
    assert rate(40, 2.0, speed=25.0) == "25.0 images/s"
    assert rate(0, None) == "-- images/s"


def test_a_finished_stage_shows_its_average_not_its_last_moments() -> None:
    assert rate(15, 90.0, speed=1 / 18.9, finished=True) == "6.0 s/image"


def test_a_slow_rate_reads_as_seconds_per_item() -> None:
    assert rate(2, 570.0) == "285.0 s/image"
