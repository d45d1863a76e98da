"""sweep.py and the launcher presets: sweeps run by Hydra's launcher plugins (joblib, submitit) end with
their comparison page and folder, share one inference through the prediction cache, and the SLURM preset
asks submitit for what it says."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
from helpers import cnnvis

from cnnvis_cli.cli import main

SWEEP = ["technique=gradcam,scorecam", "dataset.limit=45", "progress=false", "render.panels=false"]


def _check_sweep(result, tmp_path: Path) -> list[dict]:
    assert result.returncode == 0, result.stderr[-3000:]
    folder = Path(result.stdout.split()[-1])  # the sweep's folder comes last, whichever launcher ran the jobs
    assert folder.parent.parent == tmp_path / "outputs" / "multirun"
    assert (folder / "report.html").is_file()
    summaries = [json.loads((folder / job / "summary.json").read_text()) for job in ("0", "1")]
    assert [summary["techniques"] for summary in summaries] == [["gradcam"], ["scorecam"]]
    assert all(summary["status"] == "complete" for summary in summaries)
    return summaries


@pytest.mark.slow
def test_a_joblib_sweep_runs_its_jobs_side_by_side_and_predicts_once(tmp_path: Path) -> None:
    result = cnnvis("run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SWEEP,
                    f"cache={tmp_path / 'cache'}", cwd=tmp_path)
    summaries = _check_sweep(result, tmp_path)
    # the two jobs start together: one computes the predictions, the other waits for them in the cache
    assert sum(summary["predictions_from_cache"] is not None for summary in summaries) == 1


@pytest.mark.slow
def test_a_submitit_local_sweep(tmp_path: Path) -> None:
    result = cnnvis("run", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=30",
                    "hydra.launcher.gpus_per_node=0", *SWEEP, "cache=null", cwd=tmp_path)
    _check_sweep(result, tmp_path)


def test_the_slurm_preset_asks_submitit_for_one_node_of_gpus_one_process_each(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("cnnvis_cli.cli.shutil.which", lambda name: f"/usr/bin/{name}")  # as on a login node
    with mock.patch("submitit.AutoExecutor") as executor:  # no cluster here: what would be submitted
        assert main(["run", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                     "hydra.launcher.gpus_per_node=4", "technique=gradcam,scorecam"]) == 0
    cluster = executor.call_args.kwargs
    assert cluster["cluster"] == "slurm" and cluster["folder"].endswith(".submitit/%j")
    asked = executor.return_value.update_parameters.call_args.kwargs
    assert asked["slurm_partition"] == "gpu"
    assert asked["gpus_per_node"] == 4 and asked["tasks_per_node"] == 4  # a process per GPU: one run over all
    assert (asked["nodes"], asked["timeout_min"], asked["cpus_per_task"]) == (1, 240, 8)
    _launcher, *per_job = executor.return_value.map_array.call_args.args
    assert len(per_job[0]) == 2  # one array task per sweep job


def test_a_slurm_sweep_where_there_is_no_slurm_and_an_unknown_launcher_say_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("cnnvis_cli.cli.shutil.which", lambda name: None)
    assert main(["run", "-m", "hydra/launcher=slurm", "technique=gradcam,scorecam"]) == 2
    assert capsys.readouterr().err == (
        "cnnvis: error: hydra/launcher=slurm submits the sweep to SLURM, but this machine has no sbatch: run it "
        "where SLURM is (a login node), or use hydra/launcher=submitit_local or joblib here\n")
    assert main(["run", "-m", "hydra/launcher=ray", "technique=gradcam,scorecam"]) == 2
    assert "pip install 'cnnvis[cluster]'" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()
