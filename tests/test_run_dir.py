from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TIMEOUT

from cnnvis_cli.errors import UserError
from cnnvis_cli.run_dir import HOLDER_FILE, RunDir, discard_unused, read_stream, safe_name


@pytest.mark.parametrize(("text", "expected"), [
    ("golden retriever", "golden_retriever"),
    ("../../etc/passwd", "etc_passwd"),
    ("a/b\\c", "a_b_c"),
    (".hidden", "hidden"),
    ("Äpfel", "Äpfel"),
    ("", "_"),
    ("...", "_"),
])
def test_safe_name_keeps_names_readable_and_inside_one_folder(text: str, expected: str) -> None:
    assert safe_name(text) == expected


def test_safe_name_is_bounded() -> None:
    assert len(safe_name("x" * 500)) == 60


def test_paths_outside_the_run_directory_are_refused(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "run")
    with pytest.raises(ValueError, match="outside the run directory"):
        run_dir.path("..", "escape.txt")
    assert run_dir.path("heatmaps", "a.png").parent == (tmp_path / "run" / "heatmaps").resolve()


def test_atomic_json_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    run_dir.write_json("summary.json", {"accuracy": 0.5})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_csv_stream_is_renamed_only_when_closed_cleanly(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    with run_dir.csv_stream("ok.csv", ["a", "b"]) as csv:
        csv.write([[1, 2], [3, 4]])
    assert (tmp_path / "ok.csv").read_text().splitlines() == ["a,b", "1,2", "3,4"]
    with pytest.raises(RuntimeError), run_dir.csv_stream("broken.csv", ["a"]) as csv:
        csv.write([[1]])
        raise RuntimeError("interrupted")
    assert not (tmp_path / "broken.csv").exists()
    assert (tmp_path / "broken.csv.partial").read_text().splitlines() == ["a", "1"]


def test_a_streamed_csv_is_read_back_without_a_line_cut_short(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    with pytest.raises(RuntimeError), run_dir.csv_stream("rows.csv", ["a", "b"]) as csv:
        csv.write([[1, "x, y"], [3, 4]])
        raise RuntimeError("interrupted")
    assert read_stream(tmp_path / "rows.csv", ["a", "b"]) == [["1", "x, y"], ["3", "4"]]  # from the .partial
    with (tmp_path / "rows.csv.partial").open("a") as file:
        file.write("5,6")  # all its fields, but the kill came before the line's end: 6 may be 60
    assert read_stream(tmp_path / "rows.csv", ["a", "b"]) == [["1", "x, y"], ["3", "4"]]
    with run_dir.csv_stream("rows.csv", ["a", "b"]) as csv:
        csv.write([[7, 8]])
    assert read_stream(tmp_path / "rows.csv", ["a", "b"]) == [["7", "8"]]  # the finished file comes first
    assert read_stream(tmp_path / "rows.csv", ["a", "c"]) == []  # other columns: another kind of run
    assert read_stream(tmp_path / "missing.csv", ["a", "b"]) == []


def test_a_run_directory_is_held_while_a_run_writes_it(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    with run_dir.held():
        assert (tmp_path / HOLDER_FILE).read_text() == str(os.getpid())
    assert not (tmp_path / HOLDER_FILE).exists()
    other = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / HOLDER_FILE).write_text(str(other.pid))
        refusal = f"being written by another cnnvis run \\(process {other.pid}\\)"
        with pytest.raises(UserError, match=refusal), run_dir.held():
            pass
        assert (tmp_path / HOLDER_FILE).read_text() == str(other.pid)  # still theirs
    finally:
        other.kill()
        other.wait()
    with run_dir.held():  # the holder is gone: taken over
        assert (tmp_path / HOLDER_FILE).read_text() == str(os.getpid())


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_follow_the_umask_like_any_other_programs(umask: int, tmp_path: Path) -> None:
    """Under umask 022 a colleague's account or a web server can read the pictures, as it can report.html."""
    script = (f"import os; os.umask({umask:#o}); from pathlib import Path; from cnnvis_cli.run_dir import RunDir; "
              f"RunDir(Path({str(tmp_path)!r})).write_bytes('panels/a.png', b'png')")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=TIMEOUT)
    assert stat.S_IMODE((tmp_path / "panels" / "a.png").stat().st_mode) == 0o666 & ~umask


def test_a_run_stopped_by_a_mistake_leaves_no_folder_behind(tmp_path: Path) -> None:
    run = tmp_path / "outputs" / "2026-12-01" / "10-00-00"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("a: 1\n")
    (run / "cnnvis.log").write_text("")
    (tmp_path / "outputs" / "2026-12-01" / "09-00-00").mkdir()  # an earlier run of that day stays
    discard_unused(run, below=tmp_path)
    assert not run.exists() and (tmp_path / "outputs" / "2026-12-01" / "09-00-00").is_dir()
    discard_unused(tmp_path / "outputs" / "2026-12-01" / "09-00-00", below=tmp_path)
    assert not (tmp_path / "outputs").exists()  # the folders it left empty go too, up to where the command ran
    kept = tmp_path / "mine"
    (kept / ".hydra").mkdir(parents=True)
    (kept / "notes.txt").write_text("the user's own")
    discard_unused(kept, below=tmp_path)
    assert (kept / "notes.txt").is_file() and (kept / ".hydra").is_dir()  # anything else there: left alone
    here = tmp_path / "here"
    (here / ".hydra").mkdir(parents=True)
    discard_unused(here, below=here)  # hydra.run.dir=. : the folder the command runs in is never removed
    discard_unused(here, below=here / "deeper")
    assert (here / ".hydra").is_dir()
