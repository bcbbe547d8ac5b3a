"""A process pool for work that may crash or hang: results in task order, one bad task costs only itself.

:func:`imap_guarded` is ``multiprocessing.Pool.imap`` for tasks that can kill their process (a codec's
segfault or abort, an out-of-memory kill) or stall forever. Each of ``workers`` forked processes runs one
task at a time, sent over its own pipe; the parent waits (:func:`multiprocessing.connection.wait`) on
every busy worker's pipe and process sentinel, until the earliest task deadline at most. A worker that
dies, or still runs when its task's ``timeout`` has passed (it is then SIGKILLed), turns only its task
into a :class:`Failure`; a fresh worker takes the next task. (``concurrent.futures.ProcessPoolExecutor``
is broken for good by one dead worker, losing all work in flight, and has no per-task timeout.)

A worker acknowledges each task when it receives it, before starting it: a worker that dies before that (the
out-of-memory killer picks the largest process, often an idle worker still holding a large decode's heap)
costs no task; the task goes to a fresh worker (at most ``UNSTARTED_RETRIES`` times).

Workers die with their parent, so a killed run leaves no worker behind, stuck or idle, that keeps its stdout
open: on Linux each worker asks the kernel for SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``, set
right after the fork, then a check that the parent is still the one that forked it, which closes the race of a
parent dying in between). The kernel ties that signal to the *thread* that forked the worker, so it is only set
for pools driven from the main thread (a pool driven from another thread could outlive a thread that forked one
of its workers). Elsewhere (other threads, other systems) an idle worker exits when its pipe reads end-of-file
(each worker holds only its own end of its own pipe) or its parent's pid changes, but a worker stuck in a task
outlives a SIGKILLed parent. On SIGTERM, while the handler is the default one and the pool runs in the main
thread, the parent kills its workers, then dies of the signal as it would have (exit status -15 / 143).
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Iterator, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

PARENT_CHECK_S = 1.0  # an idle worker checks this often that its parent is alive
SHUTDOWN_GRACE_S = 10.0  # at the end, an idle worker gets this long to exit on its own before SIGKILL
UNSTARTED_RETRIES = 3  # a task whose worker died before acknowledging it goes to a fresh worker this often
PR_SET_PDEATHSIG = 1  # linux/prctl.h

_LIVE: dict[int, Any] = {}  # pid -> multiprocessing.Process of every worker not yet closed, for the SIGTERM handler
_handler_pid = 0  # the process whose pool installed the SIGTERM handler


@dataclass(frozen=True)
class Failure:
    """A task without a result: ``reason`` is ``"crashed"`` (its worker died; ``detail`` names the signal or
    exit code), ``"timeout"`` (it ran past the time limit and its worker was killed) or ``"error"`` (the
    function raised; ``detail`` names the exception, the worker logged its traceback)."""

    reason: str
    detail: str


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel (Linux) to SIGKILL this process when the thread that forked it ends; exit now if the parent
    died before that request (this process was already re-parented). A no-op on other systems."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): this worker may outlive a killed parent",
                    ctypes.get_errno())
    if os.getppid() != parent_pid:
        os._exit(0)


def _serve(conn: Connection, fn: Callable[[Any], Any], parent_pid: int, inherited: list[Connection],
           death_signal: bool) -> None:
    """A worker: for each ``(index, task)`` received, send ``("started", index)``, run ``fn``, send
    ``("done", index, outcome)``. ``death_signal``: die with the parent (see the module docstring)."""
    if death_signal:
        _die_with_parent(parent_pid)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler, which kills the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which ends the workers
    for c in inherited:  # the parent's ends of the pipes (ours and the other workers'), copied by fork
        c.close()
    while True:
        while not conn.poll(PARENT_CHECK_S):
            if os.getppid() != parent_pid:
                os._exit(0)  # the parent was killed: take no more work
        try:
            index, task = conn.recv()
        except EOFError:  # the parent closed the pipe (the end of the run) or died
            os._exit(0)
        try:
            conn.send(("started", index))
        except OSError:  # the parent is gone
            os._exit(0)
        try:
            out = fn(task)
        except Exception as e:
            log.error("task %d failed", index, exc_info=True)
            out = Failure("error", f"{type(e).__name__}: {e}")
        try:
            conn.send(("done", index, out))
        except OSError:  # the parent is gone
            os._exit(0)


def _exit_detail(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        hint = " (out of memory, or killed from outside)" if -code == signal.SIGKILL else ""
        return f"worker killed by signal {name}{hint}"
    return f"worker exited with code {code}"


class _Unstarted:
    """The outcome of a task whose worker died before acknowledging it: it never ran, and may run elsewhere."""

    def __init__(self, detail: str) -> None:
        self.detail = detail


class _Worker:
    """One forked process and the parent's end of its pipe; ``index`` and ``task``: what it runs (None: idle)."""

    def __init__(self, ctx: Any, fn: Callable, others: list[Connection]):
        self.conn, child = ctx.Pipe()
        death_signal = threading.current_thread() is threading.main_thread()
        self.proc = ctx.Process(target=_serve, args=(child, fn, os.getpid(), [self.conn, *others], death_signal),
                                daemon=True)
        self.proc.start()
        _LIVE[self.proc.pid] = self.proc
        child.close()
        self.index: int | None = None
        self.task: Any = None
        self.started = False  # the worker acknowledged the task
        self.timeout: float | None = None
        self.deadline = math.inf

    def start(self, index: int, task: Any, timeout: float | None) -> None:
        try:
            self.conn.send((index, task))
        except OSError:  # it died while idle: `outcome` finds no acknowledgement and the task is handed out again
            pass
        self.index, self.task, self.started, self.timeout = index, task, False, timeout
        self.deadline = time.monotonic() + timeout if timeout else math.inf

    def outcome(self, now: float) -> tuple[bool, Any]:
        """``(True, result or Failure or _Unstarted)`` once the task is over (after a Failure or _Unstarted this
        worker is closed and its process reaped), ``(False, None)`` while it runs."""
        alive = self.proc.is_alive()  # first: whatever a dead worker sent is then already in the pipe
        try:
            while self.conn.poll():
                message = self.conn.recv()
                if message[0] == "started":
                    self.started = True
                    continue
                self.index = self.task = None
                return True, message[2]
        except (EOFError, OSError):
            alive = False  # its end of the pipe closed: it died
        if alive and now < self.deadline:
            return False, None
        self.close(kill=True)  # a no-op on a dead process: its exit status stays
        if alive:
            return True, Failure("timeout", f"no result within {self.timeout:g} s; the worker was killed")
        if not self.started:
            return True, _Unstarted(_exit_detail(self.proc.exitcode))
        return True, Failure("crashed", _exit_detail(self.proc.exitcode))

    def close(self, kill: bool) -> None:
        self.conn.close()  # an idle worker reads end-of-file and exits
        if kill:
            self.proc.kill()
        self.proc.join(SHUTDOWN_GRACE_S)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        _LIVE.pop(self.proc.pid, None)


def _kill_workers_and_die(signum: int, frame: Any) -> None:
    """The SIGTERM handler while a pool runs: SIGKILL every worker (one stuck in a task would otherwise outlive
    this process), then die of the signal as the default handler would have."""
    if os.getpid() == _handler_pid:  # not in a worker forked before it reset the handler
        for proc in list(_LIVE.values()):
            proc.kill()
        for proc in list(_LIVE.values()):
            proc.join(SHUTDOWN_GRACE_S)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_sigterm_handler() -> bool:
    """Install :func:`_kill_workers_and_die` for SIGTERM where that changes nothing else: in the main thread (the
    only one that may), over the default handler only (a program's own handler, or SIG_IGN, is left alone: the
    workers still die with it, by their parent-death signal). Returns whether it was installed."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return False
    global _handler_pid
    _handler_pid = os.getpid()
    signal.signal(signal.SIGTERM, _kill_workers_and_die)
    return True


def _uninstall_sigterm_handler() -> None:
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGTERM) is _kill_workers_and_die:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def imap_guarded(
    fn: Callable[[T], R], tasks: Iterable[T], workers: int, timeout: float | None = None
) -> Iterator[R | Failure]:
    """``fn(task)`` for each task, in task order, in ``workers`` forked processes; a task whose worker dies
    or that runs longer than ``timeout`` seconds (None or 0: no limit) yields a :class:`Failure` instead.
    A task whose worker died before it started (an idle worker killed from outside) runs on a fresh worker.

    ``fn``, and what the parent holds, is inherited by fork (module functions, closures, monkeypatches all
    work); tasks and results travel pickled. At most ``2 * workers`` tasks are started ahead of the one
    being yielded (results that finish early wait in memory). Closing the iterator early (or an
    exception in the caller) kills the workers; so does SIGTERM (see the module docstring).
    """
    if workers < 1:
        raise ValueError(f"need workers >= 1, got {workers}")
    pool = _Pool(fn, tasks, workers, timeout)
    installed = _install_sigterm_handler()
    try:
        while True:
            while pool.yielded in pool.done:
                yield pool.done.pop(pool.yielded)
                pool.yielded += 1
            pool.hand_out()
            if pool.exhausted and pool.yielded == pool.sent:
                return
            pool.wait()
    finally:
        pool.close()
        if installed:
            _uninstall_sigterm_handler()


class _Pool:
    """The state of one :func:`imap_guarded`: its workers, the tasks sent, finished and to send again."""

    def __init__(self, fn: Callable, tasks: Iterable, workers: int, timeout: float | None) -> None:
        self.ctx = mp.get_context("fork")
        self.fn, self.todo, self.workers, self.timeout = fn, enumerate(tasks), workers, timeout
        self.pool: list[_Worker] = []
        self.done: dict[int, Any] = {}  # finished tasks waiting for their turn
        self.again: deque[tuple[int, Any]] = deque()  # tasks whose worker died before starting them
        self.attempts: dict[int, int] = {}  # index -> times its worker died before starting it
        self.sent = self.yielded = 0
        self.exhausted = False

    def hand_out(self) -> None:
        """Send tasks to idle workers, or new ones while fewer than ``workers`` exist: the tasks to send again
        first, then new ones while fewer than ``2 * workers`` are ahead of the one to yield."""
        while self.again or (not self.exhausted and self.sent - self.yielded < 2 * self.workers):
            worker = next((w for w in self.pool if w.index is None), None)
            if worker is None and len(self.pool) < self.workers:
                worker = _Worker(self.ctx, self.fn, [w.conn for w in self.pool])
                self.pool.append(worker)
            if worker is None:
                return
            if self.again:
                index, task = self.again.popleft()
            else:
                try:
                    index, task = next(self.todo)
                except StopIteration:
                    self.exhausted = True
                    return
                self.sent += 1
            worker.start(index, task, self.timeout)

    def wait(self) -> None:
        """Wait for a busy worker to finish, die or pass its deadline; collect every outcome there is."""
        busy = [w for w in self.pool if w.index is not None]  # never empty: task `yielded` was sent, is not done
        deadline = min(w.deadline for w in busy)
        wait([w.conn for w in busy] + [w.proc.sentinel for w in busy],
             None if deadline == math.inf else max(0.0, deadline - time.monotonic()))  # fmt: skip
        now = time.monotonic()
        for w in busy:
            index, task = w.index, w.task
            over, out = w.outcome(now)
            if over and isinstance(out, _Unstarted):
                self.attempts[index] = self.attempts.get(index, 0) + 1
                if self.attempts[index] <= UNSTARTED_RETRIES:
                    log.warning("task %d: its worker died before starting it (%s); a fresh worker takes it",
                                index, out.detail)
                    self.again.append((index, task))
                    continue
                out = Failure("crashed", f"{out.detail}; {UNSTARTED_RETRIES + 1} workers died before starting it")
            if over:
                self.done[index] = out
        self.pool = [w for w in self.pool if not w.conn.closed]  # a dead or killed worker is replaced when needed

    def close(self) -> None:
        for w in self.pool:
            w.close(kill=w.index is not None)
