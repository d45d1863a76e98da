"""Progress bars on standard error, so standard output stays free for the run directory or JSON lines."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

stderr_console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second, with the unit of the task (`images/s`, `maps/s`)."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "items")
        # while running, rich's speed over its last 30 s; at the end, and before rich has two samples to
        # measure between, the average over the whole stage
        speed = None if task.finished else task.speed
        if not speed and task.elapsed and task.completed:
            speed = task.completed / task.elapsed
        if not speed:
            text = f"-- {unit}/s"
        elif speed < 1:  # a slow technique on a CPU: seconds per item read better than 0.0 items/s
            text = f"{1 / speed:,.1f} s/{unit.removesuffix('s')}"
        else:
            text = f"{speed:,.1f} {unit}/s"
        return Text(text, style="progress.data.speed")


def progress_bar(enabled: bool = True) -> Progress:
    """A bar with count, rate and ETA; silent when disabled or when standard error is not a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeRemainingColumn(),
        console=stderr_console,
        disable=not enabled,
        transient=False,
    )
