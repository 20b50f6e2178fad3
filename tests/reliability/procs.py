"""What the daemon's processes hold, read from /proc: resident memory, open file
descriptors, and the process tree (the api process and the engine process it started)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def parent_pid(pid: int) -> int | None:
    """The parent of `pid` from /proc/<pid>/stat, or None if it is gone. The command name
    (field 2) may hold spaces and parentheses, so the fields are split after its last ')'."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields_after_name = stat[stat.rindex(")") + 2:].split()
    return int(fields_after_name[1])  # state, then ppid


def child_pids(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and parent_pid(int(entry.name)) == pid:
            children.append(int(entry.name))
    return sorted(children)


def engine_pid(api_pid: int) -> int:
    [pid] = child_pids(api_pid)
    return pid


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def num_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pid_alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class ProcessFigures:
    """One look at the api and engine processes."""

    api_rss_kib: int
    engine_rss_kib: int
    api_fds: int
    engine_fds: int

    @classmethod
    def read(cls, *, api_pid: int, engine_pid: int) -> "ProcessFigures":
        return cls(api_rss_kib=rss_kib(api_pid), engine_rss_kib=rss_kib(engine_pid),
                   api_fds=num_fds(api_pid), engine_fds=num_fds(engine_pid))

    def describe(self) -> str:
        return (f"api {self.api_rss_kib / 1024:.1f} MiB, {self.api_fds} fds; engine "
                f"{self.engine_rss_kib / 1024:.1f} MiB, {self.engine_fds} fds")


def poll_until(check: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.1) -> bool:
    """Call `check` until it is true or the time is up; its last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
