"""Interrupted runs: Ctrl-C and kill -9 in the middle of a run, then `cnnvis run resume=RUN_DIR`, whose
outputs must equal those of a run that was never interrupted."""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import CNNVIS, TIMEOUT, cnnvis

pytestmark = pytest.mark.slow  # runs of the command, stopped and resumed

ARGS = ["technique=scorecam", "technique.max_channels=48", "dataset.limit=300", "progress=false"]


def outputs(run: Path) -> dict[str, bytes]:
    """Every file a run writes whose content does not depend on when it ran."""
    keep = ("predictions.csv", "selected.csv", "errors.csv", "report.html")
    return {str(path.relative_to(run)): path.read_bytes() for path in sorted(run.rglob("*"))
            if path.is_file() and (path.name in keep or path.parts[len(run.parts)] in ("heatmaps", "panels"))}


def start_and_stop(folder: Path, cwd: Path, stop_when, sig: int,
                   args: list[str] = ARGS) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    # a shell that started us in the background may have set SIGINT to be ignored, which the child would
    # inherit (and Python then installs no KeyboardInterrupt handler): give it the default back, as a terminal would
    process = subprocess.Popen([CNNVIS, "run", *args, f"hydra.run.dir={folder}"], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + TIMEOUT  # a busy machine may take minutes to get there
    while not stop_when() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if process.poll() is None and not stop_when():
        process.kill()
        pytest.fail(f"timed out after {TIMEOUT:.0f} s waiting for the run to get far enough to be stopped (a slow "
                    "or busy machine? set CNNVIS_TEST_TIMEOUT to wait longer)", pytrace=False)
    assert process.poll() is None, "the run ended before it could be stopped"
    process.send_signal(sig)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the stopped run had not ended after {TIMEOUT:.0f} s", pytrace=False)
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


# small batches, so that a kill lands between two of them
WITH_METRICS = [*ARGS, "explain_batch_size=4", "metrics=[deletion,insertion,drop,pointing,energy]",
                "analysis=[groups,confusions,classes]"]


def csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as file:
        header, *rows = csv.reader(file)
    return [header, *sorted(rows)]


def assert_same_metrics(resumed: Path, whole: Path) -> None:
    """metrics.csv holds the same rows (a resumed run writes those it read back first), values to 1e-5."""
    ours, theirs = csv_rows(resumed / "metrics.csv"), csv_rows(whole / "metrics.csv")
    assert len(ours) == len(theirs) and ours[0] == theirs[0]
    for mine, other in zip(ours[1:], theirs[1:], strict=True):
        assert mine[:6] == other[:6]
        assert [value == "" for value in mine] == [value == "" for value in other]
        assert all(abs(float(a) - float(b)) < 1e-5 for a, b in zip(mine[6:], other[6:], strict=True) if a)


@pytest.fixture(scope="module")
def whole_with_metrics(tmp_path_factory) -> Path:
    whole = tmp_path_factory.mktemp("whole") / "run"  # every run here is called "run": the report shows it
    assert cnnvis("run", *WITH_METRICS, f"hydra.run.dir={whole}", cwd=whole.parent).returncode == 0
    return whole


def test_a_resumed_run_with_metrics_and_analyses_reuses_what_was_finished(whole_with_metrics: Path,
                                                                          tmp_path: Path) -> None:
    whole, folder = whole_with_metrics, tmp_path / "run"
    killed = start_and_stop(folder, tmp_path, lambda: written(folder) >= 8, signal.SIGKILL, WITH_METRICS)
    assert killed.returncode == -signal.SIGKILL
    assert (folder / "metrics.csv.partial").is_file() and (folder / "patterns" / "maps.csv.partial").is_file()
    panels_before = {path.name: path.stat().st_mtime_ns for path in (folder / "panels").glob("*.png")}

    resumed = cnnvis("run", f"resume={folder}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    reused = int(re.search(r"resuming: (\d+) of 49 selected samples already explained", resumed.stderr).group(1))
    assert 8 <= reused < 49
    # the finished samples were not explained again: their panels are the files written before the kill
    unchanged = [name for name, mtime in panels_before.items()
                 if (folder / "panels" / name).stat().st_mtime_ns == mtime]
    assert len(unchanged) >= reused
    assert outputs(folder) == outputs(whole)
    assert_same_metrics(folder, whole)
    summary, expected = (json.loads((run / "summary.json").read_text()) for run in (folder, whole))
    for group, means in expected["metrics"]["per_technique"]["scorecam"].items():
        assert summary["metrics"]["per_technique"]["scorecam"][group] == pytest.approx(means, abs=1e-4)
    assert csv_rows(folder / "patterns" / "groups.csv") == csv_rows(whole / "patterns" / "groups.csv")
    assert summary["patterns"] == expected["patterns"]


def test_a_sample_missing_its_metric_rows_or_its_maps_is_explained_again(whole_with_metrics: Path,
                                                                         tmp_path: Path) -> None:
    folder = tmp_path / "run"
    shutil.copytree(whole_with_metrics, folder)
    metrics, maps = csv_rows(folder / "metrics.csv"), csv_rows(folder / "patterns" / "maps.csv")
    first, second = metrics[1][0], maps[-1][1]  # two sample indices
    assert first != second
    for path, rows, column, index in ((folder / "metrics.csv", metrics, 0, first),
                                      (folder / "patterns" / "maps.csv", maps, 1, second)):
        with path.open("w", newline="", encoding="utf-8") as file:
            csv.writer(file).writerows(row for row in rows if row[column] != index)
    resumed = cnnvis("run", f"resume={folder}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: 47 of 49 selected samples already explained" in resumed.stderr
    assert_same_metrics(folder, whole_with_metrics)
    ours, theirs = (csv_rows(run / "patterns" / "maps.csv") for run in (folder, whole_with_metrics))
    assert [row[:-1] for row in ours] == [row[:-1] for row in theirs]
    for mine, other in zip(ours[1:], theirs[1:], strict=True):  # the shrunk maps, float32 in base64
        assert np.allclose(*(np.frombuffer(base64.b64decode(row[-1]), dtype="<f4") for row in (mine, other)),
                           atol=1e-5)
    assert outputs(folder) == outputs(whole_with_metrics)


def test_a_run_directory_that_a_live_run_holds_is_refused_and_a_dead_ones_is_taken_over(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    assert cnnvis("run", "dataset.limit=20", "progress=false", f"hydra.run.dir={folder}", cwd=tmp_path).returncode == 0
    assert not (folder / ".running").exists()  # let go when the run ended
    overrides = (folder / ".hydra" / "overrides.yaml").read_bytes()
    (folder / ".running").write_text(str(os.getpid()))  # this test's process: alive
    for args in ([f"resume={folder}"], ["dataset.limit=20", f"hydra.run.dir={folder}"]):
        refused = cnnvis("run", *args, cwd=tmp_path)
        assert refused.returncode == 2 and refused.stdout == ""
        assert refused.stderr.strip().splitlines()[-1] == (
            f"cnnvis: error: {folder} is being written by another cnnvis run (process {os.getpid()}); wait for it "
            f"to end or stop it, then run again (if no such run exists, delete {folder / '.running'})")
    assert (folder / ".hydra" / "overrides.yaml").read_bytes() == overrides
    dead = subprocess.Popen(["true"])  # a process that has ended, as a run killed with -9 has
    dead.wait()
    (folder / ".running").write_text(str(dead.pid))
    resumed = cnnvis("run", f"resume={folder}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert not (folder / ".running").exists()
