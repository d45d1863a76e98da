"""Interrupted runs: Ctrl-C and kill -9 in the middle of a run, then `cnnvis run resume=RUN_DIR`, whose
outputs must equal those of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_cli import CNNVIS, cnnvis

ARGS = ["technique=scorecam", "technique.max_channels=48", "dataset.limit=300", "progress=false"]


def outputs(run: Path) -> dict[str, bytes]:
    """Every file a run writes whose content does not depend on when it ran."""
    keep = ("predictions.csv", "selected.csv", "errors.csv", "report.html")
    return {str(path.relative_to(run)): path.read_bytes() for path in sorted(run.rglob("*"))
            if path.is_file() and (path.name in keep or path.parts[len(run.parts)] in ("heatmaps", "panels"))}


def start_and_stop(folder: Path, cwd: Path, stop_when, sig: int) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    # a shell that started us in the background may have set SIGINT to be ignored, which the child would
    # inherit (and Python then installs no KeyboardInterrupt handler): give it the default back, as a terminal would
    process = subprocess.Popen([CNNVIS, "run", *ARGS, f"hydra.run.dir={folder}"], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not stop_when() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be stopped"
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("whole") / "run"
    assert cnnvis("run", *ARGS, f"hydra.run.dir={folder}", cwd=folder.parent).returncode == 0
    return folder


def written(folder: Path) -> int:
    """Panels written: a sample's panel is its last file, so these samples are complete."""
    panels = folder / "panels"
    return len(list(panels.glob("*.png"))) if panels.is_dir() else 0


def test_ctrl_c_records_where_and_resume_finishes_the_same_run(uninterrupted: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    stopped = start_and_stop(folder, tmp_path, lambda: written(folder) >= 16, signal.SIGINT)
    assert stopped.returncode == 130 and stopped.stdout == ""
    assert stopped.stderr.strip().splitlines()[-1] == f"cnnvis: interrupted; finish it with: cnnvis run resume={folder}"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["interrupted_in"] == "explanation"
    assert 16 <= written(folder) < written(uninterrupted)
    resumed = cnnvis("run", f"resume={folder}", cwd=tmp_path)
    assert resumed.returncode == 0 and resumed.stdout.strip() == str(folder)
    assert "already explained" in resumed.stderr
    assert json.loads((folder / "summary.json").read_text())["status"] == "complete"
    assert outputs(folder) == outputs(uninterrupted)


@pytest.mark.parametrize("stage", ["inference", "explanation"])
def test_kill_9_then_resume_gives_the_same_outputs(stage: str, uninterrupted: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    when = (lambda: (folder / "predictions.csv.partial").is_file()) if stage == "inference" \
        else (lambda: written(folder) >= 16)
    killed = start_and_stop(folder, tmp_path, when, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert not any(path.name.startswith(".") and path.suffix == ".tmp" for path in folder.rglob("*.png"))
    resumed = cnnvis("run", f"resume={folder}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert outputs(folder) == outputs(uninterrupted)


def test_resume_needs_a_run_directory_and_nothing_else(tmp_path: Path) -> None:
    result = cnnvis("run", f"resume={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2 and "is not a cnnvis run directory" in result.stderr
