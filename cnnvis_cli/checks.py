"""A run's config checked against what the stages know: registered names and the files it points at.

`config.py` holds the schema and the rules on values alone; this module sits above the registries
(techniques, metrics, analyses, selection criteria) and the loaders, so the layers read top to bottom.
Everything here runs before a run directory is made.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from cnnvis_cli.config import RunConfig, parse_run_config
from cnnvis_cli.data import require_folder, require_list_file
from cnnvis_cli.errors import unknown_name
from cnnvis_cli.metrics import METRICS
from cnnvis_cli.models import check_model_keys, require_checkpoint
from cnnvis_cli.patterns import ANALYSES
from cnnvis_cli.selection import CRITERIA
from cnnvis_cli.techniques import TECHNIQUES


def load_run_config(cfg: DictConfig | dict[str, Any]) -> RunConfig:
    """The validated `RunConfig` of a composed config; UserError on the first mistake."""
    run_config = parse_run_config(cfg)
    check_names(run_config)
    check_model_keys(run_config.model)
    if "slices" in run_config.analysis:
        from cnnvis_cli.slices import require_sklearn

        require_sklearn()  # before any work: the install command, not a traceback at the end of the run
    return run_config


def check_names(cfg: RunConfig) -> None:
    """Every technique, selection criterion, metric and analysis the config names exists."""
    for kind, names, known, listing in (
        ("selection criterion", cfg.selection.criteria, CRITERIA, "selections"),
        ("technique", cfg.techniques, TECHNIQUES, "techniques"),
        ("metric", cfg.metrics, METRICS, "metrics"),
        ("analysis", cfg.analysis, ANALYSES, "analyses"),
    ):
        for name in names:
            if name not in known:
                raise unknown_name(kind, name, known, f"cnnvis list {listing}")


def check_paths(cfg: RunConfig) -> None:
    """The files and folders the config names exist (checked before a run directory is made)."""
    dataset = cfg.dataset
    if dataset.name == "imagefolder" and dataset.root:
        require_folder(dataset.root)
    if dataset.name == "files" and dataset.list_file not in (None, "-"):
        require_list_file(dataset.list_file)
    if cfg.model.checkpoint:
        require_checkpoint(cfg.model.checkpoint)
    if cfg.sanity_label_model:
        require_checkpoint(cfg.sanity_label_model, "sanity_label_model")
