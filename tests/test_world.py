"""world.py: how a run's work is split between processes, where a process stands, and real runs over two
processes (torchrun and devices=2) against one process's."""

from __future__ import annotations

import base64
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import CNNVIS, TIMEOUT, cnnvis, run_command
from hypothesis import given
from hypothesis import strategies as st

from cnnvis_cli.world import Place, balance, first_host, place_from_env, shard

# --- the split ------------------------------------------------------------------------------------


def test_shards_are_contiguous_unpadded_and_the_first_ranks_take_the_rest() -> None:
    assert [list(shard(7, 2, rank)) for rank in range(2)] == [[0, 1, 2, 3], [4, 5, 6]]
    assert [len(shard(42, 4, rank)) for rank in range(4)] == [11, 11, 10, 10]
    assert [list(shard(2, 3, rank)) for rank in range(3)] == [[0], [1], []]  # fewer samples than ranks
    assert list(shard(5, 1, 0)) == [0, 1, 2, 3, 4]  # one rank takes all
    assert [list(shard(0, 2, rank)) for rank in range(2)] == [[], []]


@given(count=st.integers(0, 500), size=st.integers(1, 16))
def test_every_sample_is_in_exactly_one_shard(count: int, size: int) -> None:
    parts = [shard(count, size, rank) for rank in range(size)]
    assert [index for part in parts for index in part] == list(range(count))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_balance_evens_rows_not_samples() -> None:
    # one sample with 4 targets weighs as much as four with one
    assert balance([4, 1, 1, 1, 1], 2) == [range(0, 1), range(1, 5)]
    assert balance([1, 1, 2, 2, 1, 1], 2) == [range(0, 3), range(3, 6)]
    assert balance([], 3) == [range(0, 0)] * 3  # an empty selection
    assert balance([2, 2, 2], 1) == [range(0, 3)]
    parts = balance([1, 1], 4)  # fewer samples than ranks: some ranks have nothing to do
    assert sorted(len(part) for part in parts) == [0, 0, 1, 1]


@given(weights=st.lists(st.integers(1, 6), max_size=200), size=st.integers(1, 12))
def test_balanced_parts_cover_the_selection_in_order_within_one_weight_of_their_share(weights: list[int],
                                                                                     size: int) -> None:
    parts = balance(weights, size)
    assert len(parts) == size
    assert [index for part in parts for index in part] == list(range(len(weights)))
    share = sum(weights) / size
    for part in parts:
        assert abs(sum(weights[index] for index in part) - share) <= max(weights, default=0) + 1e-9


def test_place_from_torchrun_and_slurm_environments() -> None:
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node7", "MASTER_PORT": "29400",
                "TORCHELASTIC_USE_AGENT_STORE": "True"}
    assert place_from_env(torchrun) == Place(3, 4, 1, "node7", 29400, True)
    slurm = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
             "SLURM_JOB_ID": "123456", "SLURM_JOB_NODELIST": "gpu[003-004]"}
    place = place_from_env(slurm)
    assert (place.rank, place.size, place.local_rank, place.host) == (5, 8, 1, "gpu003")
    assert place_from_env({**slurm, "MASTER_PORT": "29500"}).port == 29500  # the user's port wins
    assert place_from_env({}) is None  # one process
    assert place_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert place_from_env({**slurm, "SLURM_NTASKS": "1"}) is None
    batch_script = {key: value for key, value in slurm.items() if key != "SLURM_STEP_ID"}
    assert place_from_env(batch_script) is None  # `cnnvis run` in an sbatch script without srun: one process


def test_first_host_of_a_slurm_node_list() -> None:
    assert first_host("node1") == "node1"
    assert first_host("node1,node2") == "node1"
    assert first_host("gpu[003-007,9],cpu1") == "gpu003"
    assert first_host("a[12,14]") == "a12"


# --- real runs over two processes -----------------------------------------------------------------

RUN = ["dataset.limit=45", "technique=[gradcam,scorecam]", "metrics=[deletion,pointing]",
       "analysis=[groups,confusions]", "progress=false", "rank_timeout=30"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores, as the scaling benchmark
NOT_COMPARED = {"report.html", "summary.json", "cnnvis.log", "cnnvis.rank1.log", "predictions.npz", "cams.npz"}


def _files(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")
            if path.is_file() and ".hydra" not in path.parts and path.name not in NOT_COMPARED}


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.reader(file))


def _same_rows(one: Path, other: Path) -> None:
    """The same rows in the same order; numbers within 1e-5 (the processes' batches differ, and with them the
    order of the convolutions' sums)."""
    first, second = _rows(one), _rows(other)
    assert len(first) == len(second), one.name
    for row, (a, b) in enumerate(zip(first, second, strict=True)):
        assert len(a) == len(b), (one.name, row)
        for x, y in zip(a, b, strict=True):
            if x == y:
                continue
            assert np.allclose(*(_numbers(text) for text in (x, y)), atol=1e-5), (one.name, row, x, y)


def _numbers(text: str) -> np.ndarray:
    """A cell's numbers: `0.25`, `0.1 0.2` (top-k), or a shrunk map in base64 (patterns/maps.csv)."""
    try:
        return np.array(text.split(), dtype=float)
    except ValueError:
        return np.frombuffer(base64.b64decode(text), dtype="<f4")


def _same_run(one: Path, other: Path) -> None:
    assert _files(one) == _files(other)
    for name in sorted(_files(one)):
        if name.endswith(".csv"):
            _same_rows(one / name, other / name)
    for name in sorted(_files(one)):
        if name.endswith(".png"):  # drawn from maps equal within float rounding: at most 2 levels apart
            difference = np.abs(cv2.imread(str(one / name)).astype(int) - cv2.imread(str(other / name)).astype(int))
            assert difference.max() <= 2, name
    summaries = [json.loads((root / "summary.json").read_text()) for root in (one, other)]
    for summary in summaries:
        for key in ("started", "finished", "seconds", "processes", "predictions_from_cache"):
            summary.pop(key)
    assert summaries[0].keys() == summaries[1].keys()
    for key in summaries[0]:
        if key == "metrics":  # means of the same rows, read back from 6-decimal text on one side
            assert json.dumps(summaries[0][key]) == json.dumps(summaries[1][key]) or _close(*[s[key] for s in
                                                                                            summaries])
        else:
            assert summaries[0][key] == summaries[1][key], key


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[key], b[key]) for key in a)
    if isinstance(a, float):
        return abs(a - b) <= 1e-3
    return a == b


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("one")
    result = cnnvis("run", *RUN, "cache=null", f"hydra.run.dir={folder / 'run'}", cwd=folder, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    return folder / "run"


@pytest.mark.slow
def test_torchrun_two_processes_make_one_run_equal_to_one_process(one_process: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "cnnvis_cli", "run", *RUN, f"cache={cache}"]
    result = run_command(command, cwd=tmp_path, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.split()
    assert len(printed) == 1, result.stdout  # only rank 0 prints: the one run directory
    run_dir = Path(printed[0])
    assert [path.parent for path in (tmp_path / "outputs").glob("*/*/summary.json")] == [run_dir]
    assert json.loads((run_dir / "summary.json").read_text())["processes"] == 2
    assert not (run_dir / ".ranks").exists()
    assert "[rank 1]" in (run_dir / "cnnvis.rank1.log").read_text()
    indices = [row[0] for row in _rows(run_dir / "predictions.csv")[1:]]
    assert sorted(map(int, indices)) == sorted(set(map(int, indices))) and len(indices) == 45  # each once
    _same_run(one_process, run_dir)
    # the prediction cache that two processes wrote serves one process
    again = cnnvis("run", *RUN, f"cache={cache}", "hydra.run.dir=again", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["predictions_from_cache"]


@pytest.mark.slow
def test_devices_2_spawns_the_processes_itself(one_process: Path, tmp_path: Path) -> None:
    result = cnnvis("run", *RUN, "devices=2", "cache=null", "hydra.run.dir=two", cwd=tmp_path, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(tmp_path / "two")
    _same_run(one_process, tmp_path / "two")


SLOW_RUN = ["dataset.limit=151", "technique=[gradcam,rise]", "technique.rise.masks=1000", "explain_batch_size=2",
            "render.panels=false", "progress=false", "cache=null", "rank_timeout=10"]


@pytest.mark.slow
def test_a_killed_rank_stops_the_run_with_one_line_and_resume_finishes_it(tmp_path: Path) -> None:
    environment = {key: value for key, value in ONE_THREAD.items() if key != "HYDRA_FULL_ERROR"}
    run = subprocess.Popen([CNNVIS, "run", *SLOW_RUN, "devices=2", "hydra.run.dir=killed"], cwd=tmp_path,
                           env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir, log = tmp_path / "killed", tmp_path / "killed" / "cnnvis.rank1.log"
    deadline = time.monotonic() + TIMEOUT
    pid = None
    while time.monotonic() < deadline and run.poll() is None:  # until rank 1 is explaining
        text = log.read_text() if log.is_file() else ""
        if pid is None and "process " in text:
            pid = int(text.split("process ", 1)[1].split()[0])
        if pid and len(list((run_dir / "heatmaps" / "rise").glob("*.png"))) >= 4:  # some samples finished
            break
        time.sleep(0.2)
    assert pid is not None and run.poll() is None, "the run ended before rank 1 could be killed"
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    try:
        out, err = run.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        run.kill()
        pytest.fail("the run hung after its rank 1 was killed")
    assert time.monotonic() - killed < 60  # the watchdog's bound: 1 s polls; a busy machine gets slack
    assert run.returncode == 1
    message = err.strip().splitlines()[-1]
    assert message == (f"cnnvis: error: rank 1 (process {pid}) was killed by signal 9 (SIGKILL); the run stopped; "
                       f"finish it with: cnnvis run resume={run_dir}")
    assert out == ""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "rank 1" in summary["reason"]
    # finished with one process instead of two, it equals a run that was never stopped
    resumed = cnnvis("run", f"resume={run_dir}", "devices=1", cwd=tmp_path, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "already explained" in (run_dir / "cnnvis.log").read_text()
    whole = cnnvis("run", *SLOW_RUN, "hydra.run.dir=whole", cwd=tmp_path, env=ONE_THREAD)
    assert whole.returncode == 0, whole.stderr
    _same_run(tmp_path / "whole", run_dir)


@pytest.mark.slow
def test_an_unreadable_image_on_any_rank_is_recorded_in_the_one_errors_csv(tmp_path: Path) -> None:
    from helpers import write_image_folder

    images = write_image_folder(tmp_path / "images", {"cat": 4, "dog": 5})
    (images / "dog" / "img_9.png").write_bytes(b"not an image")  # the last file: rank 1's shard
    (images / "cat" / "img_0.png").write_bytes(b"")  # the first: rank 0's
    environment = {**ONE_THREAD, "PYTHONPATH": str(Path(__file__).parent)}
    result = cnnvis("run", "model=custom", "model.factory=helpers:tiny_classifier", "model.num_classes=2",
                    "model.input_size=32", "dataset=imagefolder", f"dataset.root={images}", "technique=gradcam",
                    "devices=2", "progress=false", "cache=null", "hydra.run.dir=run", cwd=tmp_path, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = _rows(tmp_path / "run" / "errors.csv")
    assert [row[1] for row in errors[1:]] == ["cat/img_0.png", "dog/img_9.png"]
    assert len(_rows(tmp_path / "run" / "predictions.csv")) == 1 + 8
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["samples"], summary["unreadable"], summary["processes"]) == (8, 2, 2)
