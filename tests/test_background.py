from __future__ import annotations

import threading
import time

import pytest

from cnnvis_cli.background import BackgroundWork


def test_every_job_runs_before_the_block_ends() -> None:
    done = []
    with BackgroundWork(threads=3, pending=2) as work:
        for number in range(20):
            work.submit(done.append, number)
    assert sorted(done) == list(range(20))


def test_without_threads_jobs_run_at_once_in_the_calling_thread() -> None:
    threads = []
    with BackgroundWork(threads=0) as work:
        work.submit(lambda: threads.append(threading.current_thread()))
        assert threads == [threading.current_thread()]


def test_no_more_jobs_wait_than_pending() -> None:
    release = threading.Event()
    waiting = []
    with BackgroundWork(threads=1, pending=2) as work:
        work.submit(release.wait)
        work.submit(lambda: None)
        submitter = threading.Thread(target=lambda: (work.submit(lambda: None), waiting.append("submitted")))
        submitter.start()
        submitter.join(timeout=0.5)
        assert waiting == []  # the third job waits for room
        release.set()
        submitter.join()
    assert waiting == ["submitted"]


def test_a_failed_job_is_raised_in_the_main_thread() -> None:
    def fail() -> None:
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"), BackgroundWork(threads=2, pending=4) as work:
        work.submit(fail)
        for _ in range(100):  # a later submit, or the end of the block, raises it
            work.submit(time.sleep, 0.001)
