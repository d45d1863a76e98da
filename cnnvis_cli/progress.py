"""Progress bars on standard error, so standard output stays free for the run directory or JSON lines.

In a run over many processes there is still one bar per stage, rank 0's, showing the whole run: every
rank's bar posts its counts to a `Board` (world.py keeps it in the run's store), and rank 0's bar shows the
sum, staying open until every rank has finished the stage.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

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


class Board(Protocol):
    """Where the ranks of a run post their progress per stage (`kind`: the bar's first word)."""

    rank: int

    def post(self, kind: str, completed: float, done: bool = False) -> None: ...

    def others(self, kind: str) -> float: ...  # the other ranks' completed items

    def whole(self, kind: str) -> float | None: ...  # the whole run's items in that stage, when rank 0 knows

    def finished(self, kind: str) -> bool: ...  # whether every rank's bar of that stage has closed


_board: Board | None = None


def share_progress(board: Board | None) -> None:
    """From now on, bars post to `board` (None: bars of one process)."""
    global _board
    _board = board


class RunProgress(Progress):
    """A rich Progress that, in a run over many processes, posts this rank's counts and (rank 0) shows the
    whole run's."""

    def __init__(self, *columns: Any, **options: Any) -> None:
        super().__init__(*columns, **options)
        self.board = _board
        self._own: dict[Any, float] = {}
        self._kinds: dict[Any, str] = {}

    def add_task(self, description: str, *args: Any, **fields: Any):
        task = super().add_task(description, *args, **fields)
        self._kinds[task], self._own[task] = description.split()[0], 0.0
        self._share(task)
        return task

    def update(self, task_id, *, completed: float | None = None, advance: float | None = None, **fields: Any) -> None:
        if self.board is None or task_id not in self._own:
            super().update(task_id, completed=completed, advance=advance, **fields)
            return
        if completed is not None:
            self._own[task_id] = completed
        if advance is not None:
            self._own[task_id] += advance
        super().update(task_id, **fields)
        self._share(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _share(self, task_id) -> None:
        if self.board is None:
            return
        kind = self._kinds[task_id]
        self.board.post(kind, self._own[task_id])
        if self.board.rank == 0:
            whole = self.board.whole(kind)
            super().update(task_id, completed=self._own[task_id] + self.board.others(kind),
                           **({"total": whole} if whole is not None else {}))

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None and self.board is not None:
            for task_id, stage in self._kinds.items():
                self.board.post(stage, self._own[task_id], done=True)
                # rank 0's bar of a stage of every rank stays until all of them are done
                while self.board.rank == 0 and self.board.whole(stage) is not None \
                        and not self.board.finished(stage):
                    self._share(task_id)
                    time.sleep(0.2)
                self._share(task_id)
        super().__exit__(kind, value, traceback)


def progress_bar(enabled: bool = True) -> Progress:
    """A bar with count, rate and ETA; silent when disabled or when standard error is not a terminal."""
    return RunProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeRemainingColumn(),
        console=stderr_console,
        disable=not enabled,
        transient=False,
    )
