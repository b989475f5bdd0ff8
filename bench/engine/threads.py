"""CPU threads for torch that do not oversubscribe cores other programs are using.

torch's default intra-op thread count is every core the process may use. On a laptop some of them
are busy (a browser, an IDE, a compile), and a thread pool that waits for its slowest thread then
runs at the speed of the one sharing a core: measured on 2 cores, one competing busy process makes
a 2-thread VAE step 2.7x slower, while 1 thread keeps its idle speed. So unless the user forces a
number (``--threads``, or ``OMP_NUM_THREADS`` in the environment), each run takes

    threads = max(1, round(usable cores - cores busy with other processes))

measured from /proc/stat over three short windows just before each run starts (the least of them:
a program holding a core shows in all three, one starting or exiting in one; where /proc/stat is
not readable: every usable core); a job of several runs checks again before each. The choice and
what it was based on are recorded in config.json; a forced count that is more than the cores free at
the start gets one line saying so (``ThreadChoice.note``), and the run still takes it. A thread
count can change the last bits of a CPU result (the order of a parallel sum), so a resumed run takes
the count recorded in its config.json.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch

PROC_STAT = Path("/proc/stat")
FORCED = ("--threads", "OMP_NUM_THREADS")  # the reasons that are the user's, not the load's
WINDOW_S = 0.2  # long enough for a busy core to show (20 jiffies a core), short against start-up
WINDOWS = 3


@dataclasses.dataclass(frozen=True)
class ThreadChoice:
    threads: int
    usable: int  # cores this process may run on
    busy: float | None  # cores busy with other processes over the window (None: not measured)
    reason: str  # "--threads", "OMP_NUM_THREADS", "resumed run", "load", or "all usable cores"

    def record(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def note(self) -> str | None:
        """One line when a forced count asks for more threads than the cores free at the start (the
        run still takes it), else None."""
        if self.reason not in FORCED or self.busy is None:
            return None
        free = choose(self.usable, self.busy)
        if self.threads <= free:
            return None
        return (
            f"note: {self.reason} asks for {self.threads} threads, but only {free} of {self.usable} usable "
            f"cores are free now ({self.busy:.1f} busy with other processes); the run takes {self.threads} "
            "as told, and each thread that shares a core runs at that core's pace (without --threads and "
            "OMP_NUM_THREADS a run takes the free cores)"
        )


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_times(stat: Path) -> tuple[float, float] | None:
    """(busy, total) jiffies of all cores from /proc/stat's first line, or None."""
    try:
        fields = [float(v) for v in stat.read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 4:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])  # guest time is already inside user time


def busy_cores(window_s: float = WINDOW_S, stat: Path = PROC_STAT, windows: int = WINDOWS) -> float | None:
    """Cores kept busy by other processes: the least over ``windows`` back-to-back windows of
    ``window_s`` (a program that holds a core shows in every one, a process starting or exiting
    in one), or None where /proc/stat cannot be read."""
    found = []
    for _ in range(windows):
        before, own_before, t0 = _cpu_times(stat), time.process_time(), time.perf_counter()
        if before is None:
            return None
        time.sleep(window_s)
        after, own_after, t1 = _cpu_times(stat), time.process_time(), time.perf_counter()
        if after is None:
            return None
        busy = others_busy(before, after, (own_after - own_before) / (t1 - t0), os.cpu_count() or 1)
        if busy is not None:
            found.append(busy)
    return min(found) if found else None


def others_busy(
    before: tuple[float, float], after: tuple[float, float], own_cores: float, cores: int
) -> float | None:
    """Busy cores of other processes between two (busy, total) snapshots: the machine's busy share
    times its cores, less this process's own use over the window (``own_cores``)."""
    if after[1] <= before[1]:
        return None
    machine = (after[0] - before[0]) / (after[1] - before[1]) * cores
    return max(0.0, machine - own_cores)


def choose(usable: int, busy: float | None) -> int:
    """The thread count for ``usable`` cores of which ``busy`` are taken by other processes."""
    if busy is None:
        return usable
    return max(1, min(usable, int(usable - busy + 0.5)))


def decide(forced: int | None = None, recorded: int | None = None, share: int = 1) -> ThreadChoice:
    """The thread count for a run: forced, else the environment's, else the resumed run's, else
    from the current load. ``share``: processes of this run on the machine (data-parallel ranks
    start together, so each takes its part of the cores rather than measuring the others)."""
    usable = max(1, usable_cores() // share)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    env_threads = int(env) if env.isdigit() and int(env) > 0 else None
    if forced is None and env_threads is None and recorded is not None:
        return ThreadChoice(recorded, usable, None, "resumed run")
    busy = busy_cores() if share == 1 else None  # a forced count too: ThreadChoice.note compares
    if forced is not None:
        return ThreadChoice(forced, usable, busy, "--threads")
    if env_threads is not None:
        return ThreadChoice(env_threads, usable, busy, "OMP_NUM_THREADS")
    return ThreadChoice(
        choose(usable, busy), usable, busy, "load" if busy is not None else "all usable cores"
    )


def apply(choice: ThreadChoice) -> ThreadChoice:
    torch.set_num_threads(choice.threads)
    return choice
