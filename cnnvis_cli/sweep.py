"""The end of a sweep (`cnnvis run -m ...`): the page that compares its jobs, and the sweep's folder as the
last line of standard output, after the jobs' own lines.

A Hydra callback (`hydra.callbacks` in conf/config.yaml), so it runs once, in the process that launched
the sweep, whichever launcher ran the jobs (joblib, submitit_local, submitit_slurm, ...); in a sweep that
torchrun runs over many processes, in rank 0 only. With cli.py, the only module that imports Hydra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cnnvis_cli.output import emit


class SweepReport(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from cnnvis_cli import world
        from cnnvis_cli.report import sweep_jobs, write_sweep_report

        if world.joined() and not world.current().main:
            return  # a sweep run under torchrun: rank 0 writes the page and prints the folder
        folder = Path(config.hydra.sweep.dir).resolve()
        if not folder.is_dir() or not sweep_jobs(folder):
            return  # no job finished: nothing to compare
        if config.get("report", True):
            write_sweep_report(folder)
        if config.get("stdout", "path") == "path":
            emit([str(folder)])
