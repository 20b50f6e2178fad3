"""Ends a process when its parent dies, through Linux's parent-death signal (PR_SET_PDEATHSIG).

The kernel sends the signal when the thread that forked this process exits (for a process
started from a program's main thread: when that program exits, killed or not). The setting
survives execve, so a small launcher can set it and then exec the real program. A parent
that died before the call is caught by comparing getppid() with the pid it had.

getppid() cannot tell afterwards why the signal came: while the other threads of a killed
multi-threaded parent are still exiting, the child is handed to one of them and getppid()
still names the dead parent. ParentWatch therefore takes a signal of its own (SIGHUP) and
remembers that it came.

Elsewhere than Linux this does nothing and says so (the engine process still notices its
api process's death through its stdin pipe, server/engine/service/process.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_with_parent(*, parent_pid: int, signum: int = signal.SIGTERM) -> bool:
    """Have the kernel send `signum` to this process when its parent dies; sends it at
    once if the parent (parent_pid) is already gone. False where this is not supported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}")
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signum)
    return True


async def wait_for_exit(pid: int, *, poll_s: float = 0.5) -> None:
    """Return once process `pid` (any process, not only a child) has exited: through a
    pidfd, which turns readable then (Linux), else by polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # gone already
    except (AttributeError, OSError):  # no pidfd here
        while _exists(pid):
            await asyncio.sleep(poll_s)
        return
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ParentDied(SystemExit):
    """Raised in the main thread when the parent died while ParentWatch.interrupt was on."""


class ParentWatch:
    """Learns of the parent's death by SIGHUP (the parent-death signal). `gone` turns
    True; while `interrupt` is True (say, during a long start-up) the handler also raises
    ParentDied, else the main loop is expected to look at `gone`."""

    def __init__(self, *, parent_pid: int) -> None:
        self.parent_pid = parent_pid
        self.gone = False
        self.interrupt = True

    def start(self) -> bool:
        """Install the handler and ask for the signal; False where it cannot come."""
        signal.signal(signal.SIGHUP, self._on_signal)
        return exit_with_parent(parent_pid=self.parent_pid, signum=signal.SIGHUP)

    def _on_signal(self, signum, frame) -> None:
        self.gone = True
        if self.interrupt:
            raise ParentDied(0)
