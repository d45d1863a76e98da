from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from cnnvis_cli.quick_exit import quick_exit

atexit.register(lambda: Path(sys.argv[1]).write_text("exit handlers ran"))
if sys.argv[2] == "thread":
    def late():
        time.sleep(0.5)
        Path(sys.argv[1] + ".thread").write_text("the thread finished")
    threading.Thread(target=late).start()
sys.stdout.write("no newline, still in the buffer")
quick_exit(3)
"""


@pytest.mark.parametrize("thread", ["none", "thread"])
def test_quick_exit_flushes_runs_exit_handlers_and_waits_for_threads(tmp_path: Path, thread: str) -> None:
    marker = tmp_path / "marker"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(marker), thread], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 3
    assert done.stdout == "no newline, still in the buffer"
    assert marker.read_text() == "exit handlers ran"
    if thread == "thread":
        assert Path(f"{marker}.thread").read_text() == "the thread finished"
