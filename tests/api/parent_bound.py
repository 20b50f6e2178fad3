"""Starts a command that dies with the test run that started it, even when pytest itself is killed.

    python tests/api/parent_bound.py PARENT_PID COMMAND [ARG ...]

sets the kernel's parent-death signal (SIGTERM: a daemon drains and stops its engine) and
then execs COMMAND in its place: same pid, so the caller's Popen is the command's. Use
bound_to_this_process(command) to build the argument list (any working directory: it runs
by path, with the installed `server` package); spawn it from the main thread (the signal
fires when the spawning thread exits).
"""

from __future__ import annotations

import os
import sys

from server.lifetime import exit_with_parent


def bound_to_this_process(command: list[str]) -> list[str]:
    """The argument list that runs `command` bound to the life of this process."""
    return [sys.executable, os.path.abspath(__file__), str(os.getpid()), *command]


def main(argv: list[str]) -> None:
    parent_pid, program, *args = argv
    exit_with_parent(parent_pid=int(parent_pid))
    os.execvp(program, [program, *args])


if __name__ == "__main__":
    main(sys.argv[1:])
