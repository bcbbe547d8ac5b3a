"""The guarded process pool: results in task order; a task that kills its worker, stalls or raises costs only
itself; the workers end with the iterator and when their parent is killed."""

import ctypes
import faulthandler
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from avssl.ingest.procpool import Failure, imap_guarded

TIMEOUT_S = 2.0
POLL_LIMIT_S = 60.0  # a bound on polling loops only; nothing here asserts speed


def _task(x):
    """x squared, except for the faults named by the task's value."""
    faulthandler.disable()  # pytest's: no traceback dump on the intended crashes
    if x == 3:
        os.abort()
    if x == 4:
        ctypes.string_at(0)  # a real segfault
    if x == 5:
        threading.Event().wait()  # a stall: never returns
    if x == 6:
        raise ValueError("six")
    if x == 7:
        os._exit(9)
    if x == 8:
        os.kill(os.getpid(), signal.SIGKILL)  # what the out-of-memory killer does
    return x * x


@pytest.mark.parametrize("workers", [1, 3])
def test_each_fault_costs_only_its_task(workers):
    out = list(imap_guarded(_task, range(12), workers, timeout=TIMEOUT_S))
    assert out[:3] == [0, 1, 4] and out[9:] == [81, 100, 121]
    assert out[3] == Failure("crashed", "worker killed by signal SIGABRT")
    assert out[4] == Failure("crashed", "worker killed by signal SIGSEGV")
    assert out[5] == Failure("timeout", f"no result within {TIMEOUT_S:g} s; the worker was killed")
    assert out[6] == Failure("error", "ValueError: six")
    assert out[7] == Failure("crashed", "worker exited with code 9")
    assert out[8] == Failure("crashed", "worker killed by signal SIGKILL (out of memory, or killed from outside)")


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_many_quick_tasks_in_order(workers):
    assert list(imap_guarded(abs, range(-200, 0), workers)) == list(range(200, 0, -1))
    assert list(imap_guarded(abs, [], workers)) == []


def _alive(pid):
    """False once ``pid`` has exited (gone, or a zombie waiting for a parent that is not ours)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _stall_unless_first(x):
    if x > 0:
        threading.Event().wait()
    return os.getpid()


def test_closing_early_ends_the_workers():
    results = imap_guarded(_stall_unless_first, range(4), 2)
    pid = next(results)  # the other workers are stalled on their tasks
    results.close()
    assert not _alive(pid)
    import multiprocessing

    assert multiprocessing.active_children() == []


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    """The parent takes one result, records its workers' pids and SIGKILLs itself; the workers, idle or
    busy with a task that ends, exit on their own instead of waiting for work forever."""
    script = textwrap.dedent(f"""
        import os, signal, time
        from avssl.ingest.procpool import imap_guarded
        def task(x):
            time.sleep(0.5 if x else 0)  # the others are still running when the parent dies
            return os.getpid()
        results = imap_guarded(task, range(6), 3)
        next(results)
        pids = [p.pid for p in __import__("multiprocessing").active_children()]
        open({str(tmp_path / "pids")!r}, "w").write(" ".join(map(str, pids)))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -signal.SIGKILL
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 3
    deadline = time.monotonic() + POLL_LIMIT_S
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the exits, not timing
    assert not any(map(_alive, pids))


_STUCK_PARENT = """
import os, sys, threading
from avssl.ingest import procpool
if {no_death_signal}:
    procpool._die_with_parent = lambda parent_pid: None  # only the parent's SIGTERM handler is tested
def task(x):
    path = os.path.join({folder!r}, f"{{x}}.pid")
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    threading.Event().wait()  # stuck for good
print("pool starts", flush=True)
list(procpool.imap_guarded(task, range(2), 2))
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_stuck_worker_dies_with_its_parent(tmp_path, sig):
    """Both workers are stuck in their task when the parent is killed (SIGKILL: the kernel's parent-death signal
    ends them; SIGTERM: the parent ends them itself, then dies of the signal). No worker outlives it, and none
    keeps the parent's stdout open: a caller that captures the output reads its end."""
    script = _STUCK_PARENT.format(folder=str(tmp_path), no_death_signal=sig == signal.SIGTERM)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + POLL_LIMIT_S
        while len(list(tmp_path.glob("*.pid"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # polling for the workers to start their tasks, not timing
        pids = [int(p.read_text()) for p in sorted(tmp_path.glob("*.pid"))]
        assert len(pids) == 2 and all(map(_alive, pids))
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=POLL_LIMIT_S)  # end of file once no process holds the pipe
        assert out == b"pool starts\n" and proc.returncode == -sig
        deadline = time.monotonic() + POLL_LIMIT_S
        while any(map(_alive, pids)) and time.monotonic() < deadline:
            time.sleep(0.02)  # polling for the exits, not timing
        assert not any(map(_alive, pids))
    finally:
        proc.kill()
        for pid in filter(_alive, pids):  # on a failure, leave no stuck process behind
            os.kill(pid, signal.SIGKILL)


def test_a_worker_that_dies_idle_costs_no_task(tmp_path):
    """The out-of-memory killer may pick an idle worker: the task handed to it next was never started, so it
    runs on a fresh worker. A task that kills its own worker is still reported crashed, and run once."""
    runs = tmp_path / "runs"

    def task(x):
        with open(runs, "a") as f:
            f.write(f"{x}\n")
        if x == 8:
            os.kill(os.getpid(), signal.SIGKILL)
        return os.getpid()

    results = imap_guarded(task, [0, 1, 8, 2], 1)
    first = next(results)  # one worker, now idle: the next task is handed out when the next result is asked for
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + POLL_LIMIT_S
    while _alive(first) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling for the exit, not timing
    second = next(results)
    assert isinstance(second, int) and second != first
    killed = Failure("crashed", "worker killed by signal SIGKILL (out of memory, or killed from outside)")
    assert next(results) == killed
    assert isinstance(next(results), int)
    assert list(results) == []
    assert runs.read_text().split() == ["0", "1", "8", "2"]
