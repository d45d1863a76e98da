"""One run over many processes: who this process is, how the work is split, and how the processes meet.

A run over N processes (torchrun, srun, or `devices=N`) is a sequence of stages with a meeting between them.
Within a stage each process works on its own contiguous share and writes only files whose names are its
own; at a meeting rank 0 gathers what the others made and hands out what comes next. Meetings are the only
collectives, so uneven shares never hang a per-batch loop. A single process is the world of size 1, where
every meeting returns at once.

The processes also watch each other through the rendezvous store (torch.distributed's TCPStore): each
process counts a heartbeat every second, and a process that stops counting (killed, say) or reports a
failure stops the others within `timeout` seconds, with one line naming it, instead of leaving them waiting.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np

from cnnvis_cli.quick_exit import quick_exit

log = logging.getLogger("cnnvis")

POLL = 0.05  # seconds between looks at the store while waiting at a meeting
HEARTBEAT = 1.0  # seconds between heartbeats


def shard(count: int, size: int, rank: int) -> range:
    """The positions 0..count-1 that `rank` of `size` processes takes: contiguous, without padding or
    duplicates; the first `count % size` ranks take one more (7 over 2: 0-3 and 4-6; 1 over 3: 0, -, -)."""
    base, extra = divmod(count, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def balance(weights: Sequence[int], size: int) -> list[range]:
    """`size` contiguous ranges of positions whose summed `weights` (rows: targets per sample) are as even as
    a contiguous split allows: each cut sits where the running sum is nearest its share of the total, so no
    range is off its share by more than one weight."""
    count = len(weights)
    if count == 0 or size == 1:
        return [range(0, count)] + [range(count, count)] * (size - 1)
    running = np.cumsum(np.asarray(weights, dtype=np.float64))
    total = running[-1]
    cuts = [0]
    for part in range(1, size):
        goal = total * part / size
        place = int(np.searchsorted(running, goal))  # first position whose running sum reaches the goal
        # end the range after `place` or before it, whichever leaves the running sum nearer the goal
        if place < count and (place == 0 or abs(running[place] - goal) <= abs(running[place - 1] - goal)):
            place += 1
        cuts.append(min(max(place, cuts[-1]), count))
    cuts.append(count)
    return [range(cuts[part], cuts[part + 1]) for part in range(size)]


class RankFailed(RuntimeError):
    """Another process of the run stopped or failed; the message says which and why."""


@dataclass
class World:
    """This process's place among the run's processes, and the means to meet them."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    store: Any = None  # torch.distributed.Store shared by the run's processes, when size > 1
    group: Any = None  # a gloo process group for the objects exchanged at meetings
    backend: str | None = None  # the default process group's: nccl where every rank has a GPU, else gloo
    timeout: float = 60.0
    watchdog: Watchdog | None = None
    threads: int | None = None  # `spawn`'s rank 0: torch's threads before the run split the cores
    _meetings: int = field(default=0, repr=False)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def label(self) -> str:
        return f"rank {self.rank}/{self.size}"

    def meet(self) -> None:
        """Wait until every process has reached this meeting (or one of them has stopped: RankFailed)."""
        if self.size == 1:
            return
        self._meetings += 1
        tag = f"cnnvis/meeting/{self._meetings}"
        self.store.set(f"{tag}/{self.rank}", b"1")
        self._wait([f"{tag}/{rank}" for rank in range(self.size)])

    def gather(self, value: Any) -> list[Any] | None:
        """Every process's `value` in rank order on rank 0; None on the others."""
        if self.size == 1:
            return [value]
        import torch.distributed as dist

        self.meet()
        gathered: list[Any] | None = [None] * self.size if self.main else None
        dist.gather_object(value, gathered, dst=0, group=self._process_group())
        return gathered

    def share(self, value: Any = None) -> Any:
        """Rank 0's `value`, on every process."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        self.meet()
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self._process_group())
        return box[0]

    def announce(self, text: str | None = None) -> str | None:
        """Rank 0's `text`, on every process, through the store alone: before the run knows its device,
        and so the process group's backend (the run directory, chosen before Hydra starts the run)."""
        if self.size == 1:
            return text
        self._meetings += 1
        key = f"cnnvis/announced/{self._meetings}"
        if self.main:
            self.store.set(key, (text or "").encode())
        else:
            self._wait([key])
        return self.store.get(key).decode() or None

    def scatter(self, values: list[Any] | None) -> Any:
        """Rank 0's `values[rank]`, on each rank."""
        if self.size == 1:
            return values[0]
        import torch.distributed as dist

        self.meet()
        box: list[Any] = [None]
        dist.scatter_object_list(box, values if self.main else None, src=0, group=self._process_group())
        return box[0]

    def use(self, device: Any) -> None:
        """The process group's backend for the run's device: NCCL when the ranks run on GPUs, else gloo."""
        if self.size > 1 and self.group is None:
            import torch.distributed as dist

            self.backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"

    def _process_group(self) -> Any:
        """The group for objects, formed at the first exchange (after a meeting: every rank is there), so
        that a process starts its own work while the others are still starting."""
        if self.group is None:
            import torch
            import torch.distributed as dist

            if self.backend == "nccl":
                torch.cuda.set_device(self.local_rank % torch.cuda.device_count())
            dist.init_process_group(self.backend, store=dist.PrefixStore("pg", self.store), rank=self.rank,
                                    world_size=self.size, timeout=timedelta(minutes=10))
            self.group = dist.new_group(backend="gloo") if self.backend == "nccl" else dist.group.WORLD
        return self.group

    def fail(self, message: str) -> None:
        """Tell the other processes that this one stopped, and why (they stop too, naming it)."""
        if self.store is not None:
            with contextlib.suppress(RuntimeError):
                self.store.set(f"cnnvis/failed/{self.rank}", message.encode())

    def close(self) -> None:
        """Leave the run: the other processes finish too, then the store and process group go."""
        if self.size == 1:
            return
        self.meet()
        if self.watchdog is not None:
            self.watchdog.stop()
        # nobody leaves while another still needs the store, which rank 0 hosts: rank 0 leaves last
        self.store.set(f"cnnvis/left/{self.rank}", b"1")
        if self.main:
            deadline = time.monotonic() + 30
            others = [f"cnnvis/left/{rank}" for rank in range(1, self.size)]
            while not self.store.check(others) and time.monotonic() < deadline:
                time.sleep(POLL)
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def abandon(self) -> None:
        """Leave without meeting the others: this process failed or was stopped (they learn it from `fail`
        or from its silent heartbeat)."""
        if self.watchdog is not None:
            self.watchdog.stop()

    def _wait(self, keys: list[str]) -> None:
        while not self.store.check(keys):
            if self.watchdog is not None and self.watchdog.failure:
                raise RankFailed(self.watchdog.failure)
            time.sleep(POLL)
        if self.watchdog is not None and self.watchdog.failure:
            raise RankFailed(self.watchdog.failure)


SINGLE = World()


class StoreBoard:
    """progress.Board in the run's store: each rank's count per stage, and how many ranks have finished it;
    `wholes`, rank 0's, says how many items each stage of the whole run has."""

    def __init__(self, world: World, wholes: dict[str, float] | None = None) -> None:
        self.world, self.rank, self.size, self.store = world, world.rank, world.size, world.store
        self.prefix = f"cnnvis/progress/{world._meetings}"  # the same on every rank, new for each run
        self.wholes = wholes if wholes is not None else {}
        self._posted = 0.0
        self._read: dict[str, tuple[float, float]] = {}

    def post(self, kind: str, completed: float, done: bool = False) -> None:
        now = time.monotonic()
        if not done and now - self._posted < 0.1:
            return  # a pass-by-pass technique reports thousands of times: ten posts a second are enough
        self._posted = now
        self.store.set(f"{self.prefix}/{kind}/{self.rank}", str(completed).encode())
        if done:
            self.store.add(f"{self.prefix}/{kind}/done", 1)

    def others(self, kind: str) -> float:
        last, value = self._read.get(kind, (-1.0, 0.0))
        if time.monotonic() - last >= 0.1:  # at most ten reads a second, however often the bar moves
            keys = [f"{self.prefix}/{kind}/{rank}" for rank in range(self.size) if rank != self.rank]
            value = sum(float(self.store.get(key)) for key in keys if self.store.check([key]))
            self._read[kind] = (time.monotonic(), value)
        return value

    def whole(self, kind: str) -> float | None:
        return self.wholes.get(kind)

    def finished(self, kind: str) -> bool:
        watchdog = self.world.watchdog
        if watchdog is not None and watchdog.failure:
            raise RankFailed(watchdog.failure)  # a rank that stopped will never finish
        return self.store.add(f"{self.prefix}/{kind}/done", 0) >= self.size


class Watchdog:
    """A thread that keeps this process's heartbeat and watches the others' (through its own connection
    to the store); when one stops beating for `timeout` seconds or reports a failure, it records why and
    interrupts this process's main thread."""

    def __init__(self, connect, rank: int, size: int, timeout: float, pids: dict[int, Any] | None = None) -> None:
        self.connect = connect  # makes a store client of its own: a store is not shared across threads
        self.rank, self.size, self.timeout = rank, size, timeout
        self.children = pids or {}  # rank -> multiprocessing.Process, for `devices=N`'s first process
        self.failure: str | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cnnvis-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        try:
            store = self.connect()
        except RuntimeError as error:
            self._stop_run(f"cannot reach the run's other processes ({error})")
            return
        started = time.monotonic()
        seen = {rank: (0, started) for rank in range(self.size) if rank != self.rank}
        while not self._stopped.wait(HEARTBEAT):
            try:
                store.add(f"cnnvis/alive/{self.rank}", 1)
                for rank, (count, since) in list(seen.items()):
                    failed = f"cnnvis/failed/{rank}"
                    if store.check([failed]):
                        self._stop_run(f"rank {rank} failed: {store.get(failed).decode()}")
                        return
                    now_count = store.add(f"cnnvis/alive/{rank}", 0)
                    if now_count != count:
                        seen[rank] = (now_count, time.monotonic())
                    # a rank that has not started beating may still be importing torch: ten times longer
                    elif time.monotonic() - since > self.timeout * (1 if count else 10):
                        self._stop_run(f"rank {rank} stopped responding (no heartbeat for {self.timeout:.0f} s)")
                        return
                for rank, process in self.children.items():
                    if process.exitcode not in (None, 0):
                        self._stop_run(f"rank {rank} (process {process.pid}) {_exit_reason(process.exitcode)}")
                        return
            except RuntimeError as error:  # the store's host, rank 0, is gone
                if not self._stopped.is_set():
                    self._stop_run(f"rank 0 stopped (the run's store is gone: {str(error).splitlines()[0]})")
                return

    def _stop_run(self, reason: str) -> None:
        if self._stopped.is_set():
            return
        self.failure = reason
        log.error("%s; stopping", reason)
        # SIGINT may be ignored (a job started in the background inherits that): a signal of our own
        _thread.interrupt_main(STOP_SIGNAL if _stop_handler_installed() else signal.SIGINT)


STOP_SIGNAL = getattr(signal, "SIGUSR1", signal.SIGINT)  # what the watchdog sends the main thread: stop as on Ctrl-C


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_handler_installed() -> bool:
    return signal.getsignal(STOP_SIGNAL) is _raise_interrupt


def _install_stop_handler() -> None:
    """Let the watchdog stop the main thread whatever happens to SIGINT (only the main thread may do this)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(STOP_SIGNAL, _raise_interrupt)


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"was killed by signal {-code} ({name})"
    return f"exited with code {code}"


# --- joining a run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """Where a process stands: its rank, the world's size, its rank on its machine, and the store's address."""

    rank: int
    size: int
    local_rank: int
    host: str
    port: int
    store_hosted_by_launcher: bool = False  # torchrun's agent hosts the store; the workers are its clients


def place_from_env(env: dict[str, str] | None = None) -> Place | None:
    """This process's place when a launcher started it as one of many: torchrun's RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a submitit job's tasks (Hydra's submitit launchers with
    tasks_per_node > 1); or SLURM's SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID (srun, with the first node of
    the job as the store's host); None for a single process."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:
        size = int(env["WORLD_SIZE"])
        if size <= 1:
            return None
        return Place(int(env["RANK"]), size, int(env.get("LOCAL_RANK", "0")), env.get("MASTER_ADDR", "127.0.0.1"),
                     int(env.get("MASTER_PORT", "29500")), env.get("TORCHELASTIC_USE_AGENT_STORE") == "True")
    if env.get("SUBMITIT_EXECUTOR") and int(env.get("SUBMITIT_LOCAL_NTASKS") or env.get("SLURM_NTASKS") or 1) > 1:
        from submitit.helpers import TorchDistributedEnvironment  # a job of Hydra's submitit launchers

        job = TorchDistributedEnvironment()
        return Place(job.rank, job.world_size, job.local_rank, job.master_addr, job.master_port)
    # srun's tasks (a job step), not the batch script or an salloc shell, which set SLURM_NTASKS too
    if "SLURM_STEP_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        host = env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "")))
        port = int(env.get("MASTER_PORT") or 20000 + int(env["SLURM_JOB_ID"]) % 20000)
        return Place(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", "0")),
                     host or "127.0.0.1", port)
    return None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: `gpu[003-007,9],cpu1` -> `gpu003`."""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist.split("]")[0] + "]"
    if "[" not in head:
        return head
    prefix, numbers = head.split("[", 1)
    return prefix + numbers.rstrip("]").split(",")[0].split("-")[0]


def join(place: Place, timeout: float, children: dict[int, Any] | None = None) -> World:
    """Connect this process to the run's others: the store and the watchdog now, the process group (NCCL
    where the run is on GPUs, gloo otherwise; `World.use`) at the first exchange."""
    import torch.distributed as dist

    def connect(wait_for_workers: bool = False, master: bool = False):
        return dist.TCPStore(place.host, place.port, place.size, is_master=master, timeout=timedelta(minutes=10),
                             wait_for_workers=wait_for_workers)

    _install_stop_handler()
    hosts = place.rank == 0 and not place.store_hosted_by_launcher
    store = dist.PrefixStore("cnnvis-run", connect(master=hosts))
    watchdog = Watchdog(lambda: dist.PrefixStore("cnnvis-run", connect()), place.rank, place.size, timeout, children)
    return World(place.rank, place.size, place.local_rank, store, None, "gloo", timeout, watchdog)


_joined: World | None = None


def current(timeout: float = 60.0) -> World:
    """This process's world: joined once, when a launcher (torchrun, srun) started it as one of many."""
    global _joined
    if _joined is None:
        place = place_from_env()
        _joined = SINGLE if place is None else join(place, timeout)
        if place is not None:
            _stop_on_sigterm(_joined)
    return _joined


def joined() -> bool:
    """Whether `current` has joined this process to its world already."""
    return _joined is not None


def forget() -> None:
    """After `close`: the next `current` joins again (a launcher's next job in this process)."""
    global _joined
    _joined = None


def _stop_on_sigterm(world: World) -> None:
    """torchrun (and SLURM) stop every rank with SIGTERM when one fails: stop as on Ctrl-C, saying why."""

    def stop(signum: int, frame: Any) -> None:
        if world.watchdog is not None and world.watchdog.failure is None:
            world.watchdog.failure = "stopped by the launcher (SIGTERM), which does so when another rank fails"
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def spawn(size: int, timeout: float, target, *args: Any) -> World:
    """Start ranks 1..size-1 of a run on this machine, each calling `target(world, *args)`, and join them as
    rank 0 (`devices=N`: no launcher needed). The processes split the CPU's cores between them."""
    import multiprocessing

    import torch

    port = _free_port()
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    children = {}
    for rank in range(1, size):
        place = Place(rank, size, rank, "127.0.0.1", port)
        children[rank] = context.Process(target=_child, args=(place, timeout, target, args), name=f"cnnvis-rank{rank}")
        children[rank].start()
    try:
        world = join(Place(0, size, 0, "127.0.0.1", port), timeout, children)
    except BaseException:
        for process in children.values():
            process.terminate()
        raise
    world.threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
    return world


def leave(world: World, failed: bool = False) -> None:
    """The end of a `spawn`ed run for rank 0: the other ranks leave with it, or are stopped when the run
    failed; none is left behind."""
    import torch

    children = world.watchdog.children if world.watchdog else {}
    if failed and world.watchdog is not None:
        world.watchdog.stop()  # no interruption of the clean-up below
    if world.watchdog is not None and world.watchdog.failure is None and all(
            process.exitcode in (None, 0) for process in children.values()) and not failed:
        world.close()
    for process in children.values():
        process.join(timeout=30)
        if process.is_alive():
            process.terminate()
            process.join(timeout=10)
    if world.watchdog is not None:
        world.watchdog.stop()
    if world.threads:
        torch.set_num_threads(world.threads)  # as before the run: a sweep's next job runs in this process


def _child(place: Place, timeout: float, target, args: tuple) -> None:
    import sys

    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // place.size))
    world = join(place, timeout)
    try:
        target(world, *args)
    except KeyboardInterrupt:  # the watchdog stopped this rank: another one failed, and rank 0 says so
        sys.exit(1)
    except BaseException as error:
        world.fail(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": "))
        raise
    world.close()
    quick_exit(0)  # rank 0 waits for this process to end

def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
