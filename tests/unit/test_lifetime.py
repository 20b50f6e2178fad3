"""server/lifetime.py on real processes: a watched child stops the moment its parent is
SIGKILLed, and a parent that died before the watch started is caught too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.reliability.procs import pid_alive, poll_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the parent-death signal is Linux's")

# A child that watches its parent and would otherwise sleep for ten minutes (a start-up).
WATCHED_CHILD = textwrap.dedent("""
    import os, sys, time
    from server.lifetime import ParentWatch
    watch = ParentWatch(parent_pid=int(sys.argv[1]))
    watch.interrupt = sys.argv[2] == "interrupt"
    watch.start()
    print("watching", flush=True)
    time.sleep(0.5)
    print("gone" if watch.gone else "parent alive", flush=True)
    time.sleep(600)
""")

# A parent that starts the watched child, says its pid, and waits to be killed.
PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), "interrupt"],
                             stdout=subprocess.DEVNULL)
    print(child.pid, flush=True)
    time.sleep(600)
""")


def test_a_watched_child_stops_when_its_parent_is_sigkilled():
    parent = subprocess.Popen([sys.executable, "-c", PARENT, WATCHED_CHILD],
                              stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    try:
        assert pid_alive(child_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert poll_until(lambda: not pid_alive(child_pid), timeout_s=5)
    finally:
        if pid_alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


def test_a_parent_gone_before_the_watch_started_interrupts_at_once():
    not_the_parent = os.getpid() + 10_000_000  # no process has this pid
    result = subprocess.run([sys.executable, "-c", WATCHED_CHILD, str(not_the_parent),
                             "interrupt"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0  # ParentDied is a clean SystemExit
    assert "watching" not in result.stdout


def test_without_interrupting_the_watch_only_marks_the_parent_gone():
    not_the_parent = os.getpid() + 10_000_000
    child = subprocess.Popen([sys.executable, "-c", WATCHED_CHILD, str(not_the_parent), "flag"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "watching"
        assert child.stdout.readline().strip() == "gone"
    finally:
        child.kill()
        child.wait()
