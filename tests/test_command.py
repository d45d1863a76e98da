"""The installed `cnnvis` command, run as a user would, in a subprocess from another directory."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import CNNVIS, TIMEOUT, cnnvis, run_command, write_image_folder

pytestmark = pytest.mark.slow  # each test starts the command: seconds apiece


def test_version_and_help(tmp_path: Path) -> None:
    from cnnvis_cli import __version__

    assert cnnvis("--version", cwd=tmp_path).stdout.strip() == f"cnnvis {__version__}"
    assert "cnnvis run" in cnnvis("--help", cwd=tmp_path).stdout
    hydra_help = cnnvis("run", "--help", cwd=tmp_path)
    assert hydra_help.returncode == 0 and "model: alexnet, convnext_tiny" in hydra_help.stdout


def test_run_prints_only_the_run_directory_on_stdout(tmp_path: Path) -> None:
    run_dir = tmp_path / "my run"
    result = cnnvis("run", "dataset.limit=40", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(run_dir)]
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "cnnvis.log").is_file()
    assert (run_dir / "summary.json").is_file() and list((run_dir / "heatmaps" / "gradcam").glob("*.png"))
    assert "accuracy" in result.stderr
    log = (run_dir / "cnnvis.log").read_text()  # the log holds what the run found, as standard error does
    assert "40 samples, accuracy" in log and "heatmaps with gradcam" in log and " s on cpu; results in" in log
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "- 'true'" in config and "True" not in config  # the target `true`, not YAML's boolean


def test_default_run_directory_is_timestamped_under_outputs(tmp_path: Path) -> None:
    result = cnnvis("run", "dataset.limit=10", "progress=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.splitlines()[-1])
    assert run_dir.parent.parent == tmp_path / "outputs" and (run_dir / "predictions.csv").is_file()


def test_multirun_prints_one_directory_per_job_and_runs_inference_once(tmp_path: Path) -> None:
    result = cnnvis("run", "-m", "technique=gradcam,scorecam", "technique.max_channels=4", "dataset.limit=24",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}", f"cache={tmp_path / 'cache'}", "progress=false",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()  # each job's directory, then the sweep's, whose page compares them
    assert lines == [str(tmp_path / "sweep" / "0"), str(tmp_path / "sweep" / "1"), str(tmp_path / "sweep")]
    page = (tmp_path / "sweep" / "report.html").read_text()
    assert 'href="0/report.html"' in page and 'href="1/report.html"' in page
    assert f"<h1>Sweep {tmp_path.name}/sweep: 2 jobs</h1>" in page  # named by its folder, not the machine's path
    lines = lines[:2]
    summaries = [json.loads((Path(line) / "summary.json").read_text()) for line in lines]
    assert [summary["techniques"] for summary in summaries] == [["gradcam"], ["scorecam"]]
    # the second job reuses the first job's predictions, and says so
    assert summaries[0]["predictions_from_cache"] is None
    assert Path(summaries[1]["predictions_from_cache"]).parent == tmp_path / "cache" / "predictions"
    assert result.stderr.count("inference skipped: reusing the 24 predictions cached") == 1
    assert "inference skipped" in (Path(lines[1]) / "cnnvis.log").read_text()
    assert (Path(lines[0]) / "predictions.csv").read_bytes() == (Path(lines[1]) / "predictions.csv").read_bytes()


def test_jsonl_output_is_one_object_per_selected_sample(tmp_path: Path) -> None:
    result = cnnvis("run", "dataset.limit=40", "stdout=jsonl", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert len(records) == summary["selection"]["selected"] > 0
    assert all(Path(p).is_file() for record in records for p in record["overlays"])
    assert {"id", "path", "label", "prediction", "confidence", "reasons", "overlays"} <= set(records[0])


def test_config_dir_flag_and_searchpath_together(tmp_path: Path) -> None:
    for folder, option in (("one", "mine"), ("two", "yours")):
        (tmp_path / folder / "model").mkdir(parents=True)
        (tmp_path / folder / "model" / f"{option}.yaml").write_text("source: demo\nname: demo\n")
    result = cnnvis("run", "-cd", str(tmp_path / "one"), f"hydra.searchpath=[file://{tmp_path / 'two'}]",
                    "model=yours", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("mine", "yours"):
        result = cnnvis("run", "-cd", str(tmp_path / "one"), f"hydra.searchpath=[file://{tmp_path / 'two'}]",
                        f"model={option}", "dataset.limit=8", f"hydra.run.dir={tmp_path / option}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr


def test_hydra_cfg_flag_prints_the_composed_config(tmp_path: Path) -> None:
    result = cnnvis("run", "--cfg", "job", "model=vgg16", cwd=tmp_path)
    assert result.returncode == 0 and "name: vgg16" in result.stdout and not (tmp_path / "outputs").exists()


def test_files_dataset_from_standard_input(tmp_path: Path) -> None:
    from helpers import write_image_folder

    root = write_image_folder(tmp_path / "imgs", {"a": 2})
    listing = "".join(f"{path}\n" for path in sorted(root.rglob("*.png")))
    result = cnnvis("run", "model=resnet18", "model.weights=null", "model.input_size=64", "model.resize_size=64",
                    "dataset=files", "dataset.list_file=-", "dataset.num_workers=0",
                    "selection.criteria=[low_confidence]", "selection.threshold=1.0",
                    f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path, stdin=listing)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "r" / "heatmaps" / "gradcam").glob("*.png"))) == 2


def write_mismatched_checkpoint(folder: Path) -> Path:
    import torch

    path = folder / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(3)}, path)
    return path


@pytest.mark.parametrize(("args", "message"), [
    (["dataset=imagenett"], "unknown dataset 'imagenett'; did you mean imagenette"),
    (["selection=wrongs"], "unknown selection 'wrongs'"),
    (["dataset=imagefolder", "dataset.root=EMPTY"], "no images"),
    (["model=resnet18", "model.weights=null", "technique.layers=[layer9]"],
     "unknown target layer 'layer9'; did you mean"),
    (["model=resnet18", "model.checkpoint=CHECKPOINT"], "does not fit the architecture"),
    (["model=resnet18", "model.checkpoint=TEXT"], "is not a PyTorch checkpoint (neither the zip file"),
    (["model=resnet18", "model.weights=null", "model.target_layer=layer9"], "unknown target layer 'layer9'"),
    (["device=cuda"], "device=cuda but CUDA is not available here; use device=auto or device=cpu"),
    (["targets=[pred,dishwasher]"], "unknown target 'dishwasher'"),
    (["targets=[pred,7]"], "unknown target '7'"),  # the demo has 4 classes
    (["sanity=true", "sanity_label_model=TEXT"], "is not a PyTorch checkpoint"),
])
def test_setup_mistakes_are_one_line_and_leave_nothing_behind(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    checkpoint = write_mismatched_checkpoint(tmp_path)
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    args = [arg.replace("EMPTY", str(tmp_path / "empty")).replace("CHECKPOINT", str(checkpoint))
            .replace("TEXT", str(tmp_path / "text.pt")) for arg in args]
    result = cnnvis("run", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if "][WARNING]" not in line]
    assert len(lines) == 1 and lines[0].startswith("cnnvis: error: ") and message in lines[0]
    assert "\x1b[" not in lines[0]  # no terminal colours from a library's message
    assert not (tmp_path / "outputs").exists()  # no run directory: the mistake stopped it before any work


def test_hydra_full_error_shows_the_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    result = run_command([CNNVIS, "run", "targets=[pred,dishwasher]"], cwd=tmp_path, env=env)
    assert result.returncode == 2 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("cnnvis: error: unknown target 'dishwasher'")


def test_home_folder_paths_work_as_the_readme_writes_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_image_folder(home / "data" / "val", {"cat": 2, "dog": 1})
    result = cnnvis("run", "model=resnet18", "model.weights=null", "model.input_size=64", "dataset=imagefolder",
                    "dataset.root=~/data/val", "dataset.num_workers=0", f"hydra.run.dir={tmp_path / 'r'}",
                    "progress=false", cwd=tmp_path, env={**os.environ, "HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "r" / "predictions.csv").read_text().splitlines()) == 1 + 3


@pytest.mark.parametrize("args", [["list", "techniques"], ["--help"], ["run", "dataset.limit=8", "progress=false"]])
def test_a_reader_that_goes_away_at_once_ends_the_output_quietly(args: list[str], tmp_path: Path) -> None:
    process = subprocess.Popen([CNNVIS, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    process.stdout.close()  # as `| head -0` would
    try:
        stderr = process.communicate(timeout=TIMEOUT)[1]
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"timed out after {TIMEOUT:.0f} s", pytrace=False)
    assert process.returncode == 0 and "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    if args[0] == "run":
        assert list((tmp_path / "outputs").glob("*/*/summary.json"))  # the run itself finished


def test_what_a_models_code_prints_goes_to_standard_error(tmp_path: Path) -> None:
    (tmp_path / "noisy_nets.py").write_text(
        "import torchvision\n"
        "def build():\n"
        "    print('Loaded pretrained weights for noisy-net')\n"
        "    return torchvision.models.resnet18(weights=None, num_classes=2)\n")
    root = write_image_folder(tmp_path / "images", {"cat": 2, "dog": 1})
    result = cnnvis("run", "model=custom", "model.factory=noisy_nets:build", "model.input_size=64",
                    "model.class_names=dataset", "dataset=imagefolder", f"dataset.root={root}", "dataset.num_workers=0",
                    "progress=false", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path,
                    env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(tmp_path / "r")]
    assert "Loaded pretrained weights for noisy-net" in result.stderr


def test_list_layers_flags_a_module_called_more_than_once(tmp_path: Path) -> None:
    (tmp_path / "shared_act.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)\n"
        "        self.act, self.head = nn.ReLU(), nn.Linear(4, 2)\n"
        "    def forward(self, x):\n"
        "        x = self.act(self.conv2(self.act(self.conv1(x))))\n"
        "        return self.head(x.mean(dim=(2, 3)))\n")
    result = cnnvis("list", "layers", "model=custom", "model.factory=shared_act:Net", "model.input_size=32",
                    cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("* act"))
    assert "ReLU" in line and "called 2 times per pass: CAMs explain its last call" in line


def test_a_mistake_does_not_remove_a_run_directory_that_was_there_before(tmp_path: Path) -> None:
    given = tmp_path / "my runs" / "today"
    given.mkdir(parents=True)  # made by the user, empty
    result = cnnvis("run", "targets=[pred,7]", f"hydra.run.dir={given}", cwd=tmp_path)
    assert result.returncode == 2 and "unknown target '7'" in result.stderr
    assert given.is_dir()
