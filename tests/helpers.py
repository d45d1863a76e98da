"""Helpers for tests: image folders written by the tests themselves, composed configs, and the installed
command run in a subprocess as a user would run it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnvis_cli.checks import load_run_config
from cnnvis_cli.cli import compose
from cnnvis_cli.config import RunConfig


def write_image_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (72, 96), seed: int = 0) -> Path:
    """`root/CLASS/img_N.png` with random pixels: `classes` maps class name -> image count."""
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{index}.png")
    return root


def run_config(*overrides: str) -> RunConfig:
    """The validated config `cnnvis run OVERRIDES` would use, with progress bars off."""
    return load_run_config(compose(["progress=false", *overrides]))


CNNVIS = shutil.which("cnnvis") or str(Path(sys.executable).parent / "cnnvis")
# a command that takes a few seconds on an idle machine can take minutes on a busy one: wait long, and say so
TIMEOUT = float(os.environ.get("CNNVIS_TEST_TIMEOUT", "1800"))


def run_command(command: list[str], *, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None,
                timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """`command`'s exit code and output; a test failure that says so when it runs past `timeout` seconds."""
    try:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, input=stdin, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"timed out after {timeout:.0f} s: {' '.join(command)} (a slow or busy machine? set "
                    "CNNVIS_TEST_TIMEOUT to wait longer)", pytrace=False)


def cnnvis(*args: str, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    """The installed `cnnvis` command, without HYDRA_FULL_ERROR (a user's one-line errors)."""
    environment = {key: value for key, value in (env or os.environ).items() if key != "HYDRA_FULL_ERROR"}
    return run_command([CNNVIS, *args], cwd=cwd, env=environment, stdin=stdin)


def tiny_classifier(num_classes: int = 2):
    """A convolution, a ReLU and a linear head: a model fast enough to run hundreds of times in one test
    (`model=custom model.factory=helpers:tiny_classifier`)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))


def count_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Forward passes of the model that each `pipeline.run` loads from now on, one entry per run."""
    from cnnvis_cli import pipeline

    passes: list[int] = []
    load = pipeline.load_model

    def counting_load(cfg):
        loaded = load(cfg)
        passes.append(0)
        number = len(passes) - 1
        loaded.module.register_forward_hook(lambda *_: passes.__setitem__(number, passes[number] + 1))
        return loaded

    monkeypatch.setattr(pipeline, "load_model", counting_load)
    return passes


def forward_keeping(model, module, images):
    """The model's logits on `images` (with gradients) and `module`'s output in that pass, so a test can take
    gradients with respect to the layer by hand."""
    import torch

    kept = []
    handle = module.register_forward_hook(lambda _m, _i, output: kept.append(output))
    try:
        with torch.enable_grad():
            logits = model(images.clone().requires_grad_(True))
    finally:
        handle.remove()
    return logits, kept[-1]
