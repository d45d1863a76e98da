"""The wheel carries the configs and the demo weights, builds without warnings, and the command works from it
in any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds and installs the wheel

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_configs_and_demo_and_runs_from_another_folder(tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--wheel-dir", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stderr
    # pip's notes on the machine's own index settings ("Location ... is ignored") are not the build's
    build_output = [line for line in (built.stdout + built.stderr).splitlines()
                    if not line.startswith("WARNING: Location")]
    assert not [line for line in build_output if "Warning" in line or "!!" in line], "\n".join(build_output)
    wheel = next((tmp_path / "dist").glob("cnnvis-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"cnnvis_cli/conf/config.yaml", "cnnvis_cli/conf/model/vgg16.yaml", "cnnvis_cli/demo/demo_net.pt",
            "cnnvis_cli/conf/technique/scorecam.yaml", "cnnvis_cli/imagenet_wnids.txt",
            "cnnvis_cli/conf/hydra/launcher/slurm.yaml", "cnnvis_cli/conf/model/timm.yaml"} <= names
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "cnnvis_cli").rglob("*.py")}
    assert modules <= names, f"not in the wheel: {sorted(modules - names)}"
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    located = subprocess.run([sys.executable, "-c", "from cnnvis_cli.cli import config_dir; print(config_dir())"],
                             cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert Path(located.stdout.strip()) == site / "cnnvis_cli" / "conf"
    result = subprocess.run([sys.executable, "-m", "cnnvis_cli", "run", "dataset.limit=30", "progress=false"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.splitlines()[-1])
    assert run_dir.is_relative_to(elsewhere / "outputs") and (run_dir / "summary.json").is_file()
