"""A process pool for work that may crash or hang: results in task order, one bad task costs only itself.

:func:`imap_guarded` is ``multiprocessing.Pool.imap`` for tasks that can kill their process (a codec's
segfault or abort, an out-of-memory kill) or stall forever. Each of ``workers`` forked processes runs one
task at a time, sent over its own pipe; the parent waits (:func:`multiprocessing.connection.wait`) on
every busy worker's pipe and process sentinel, until the earliest task deadline at most. A worker that
dies, or still runs when its task's ``timeout`` has passed (it is then SIGKILLed), turns only its task
into a :class:`Failure`; a fresh worker takes the next task. (``concurrent.futures.ProcessPoolExecutor``
is broken for good by one dead worker, losing all work in flight, and has no per-task timeout.)

Workers exit when the parent is gone, so a killed run leaves no worker taking more work: each worker
holds only its own end of its own pipe (it closes the copies of the parent's ends it inherits), so
the parent's death is end-of-file on that pipe, and while idle it also checks its parent's pid.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Iterator, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

PARENT_CHECK_S = 1.0  # an idle worker checks this often that its parent is alive
SHUTDOWN_GRACE_S = 10.0  # at the end, an idle worker gets this long to exit on its own before SIGKILL


@dataclass(frozen=True)
class Failure:
    """A task without a result: ``reason`` is ``"crashed"`` (its worker died; ``detail`` names the signal or
    exit code), ``"timeout"`` (it ran past the time limit and its worker was killed) or ``"error"`` (the
    function raised; ``detail`` names the exception, the worker logged its traceback)."""

    reason: str
    detail: str


def _serve(conn: Connection, fn: Callable[[Any], Any], parent_pid: int, inherited: list[Connection]) -> None:
    """A worker: run ``fn`` on each ``(index, task)`` received, send back ``(index, outcome)``."""
    for c in inherited:  # the parent's ends of the pipes (ours and the other workers'), copied by fork
        c.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which ends the workers
    while True:
        while not conn.poll(PARENT_CHECK_S):
            if os.getppid() != parent_pid:
                os._exit(0)  # the parent was killed: take no more work
        try:
            index, task = conn.recv()
        except EOFError:  # the parent closed the pipe (the end of the run) or died
            os._exit(0)
        try:
            out = fn(task)
        except Exception as e:
            log.error("task %d failed", index, exc_info=True)
            out = Failure("error", f"{type(e).__name__}: {e}")
        try:
            conn.send((index, out))
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


class _Worker:
    """One forked process and the parent's end of its pipe; ``index`` is the task it runs (None: idle)."""

    def __init__(self, ctx: Any, fn: Callable, others: list[Connection]):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, fn, os.getpid(), [self.conn, *others]), daemon=True)
        self.proc.start()
        child.close()
        self.index: int | None = None
        self.timeout: float | None = None
        self.deadline = math.inf

    def start(self, index: int, task: Any, timeout: float | None) -> None:
        try:
            self.conn.send((index, task))
        except OSError:  # it died while idle: `outcome` reports the task as crashed, with the exit status
            pass
        self.index, self.timeout = index, timeout
        self.deadline = time.monotonic() + timeout if timeout else math.inf

    def outcome(self, now: float) -> tuple[bool, Any]:
        """``(True, result or Failure)`` once the task is over (after a Failure this worker is closed and its
        process reaped), ``(False, None)`` while it runs."""
        alive = self.proc.is_alive()  # first: whatever a dead worker sent is then already in the pipe
        if self.conn.poll():
            try:
                _, out = self.conn.recv()
            except (EOFError, OSError):
                alive = False  # its end of the pipe closed: it died
            else:
                self.index = None
                return True, out
        if alive and now < self.deadline:
            return False, None
        self.close(kill=True)  # a no-op on a dead process: its exit status stays
        if alive:
            return True, Failure("timeout", f"no result within {self.timeout:g} s; the worker was killed")
        return True, Failure("crashed", _exit_detail(self.proc.exitcode))

    def close(self, kill: bool) -> None:
        self.conn.close()  # an idle worker reads end-of-file and exits
        if kill:
            self.proc.kill()
        self.proc.join(SHUTDOWN_GRACE_S)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def imap_guarded(
    fn: Callable[[T], R], tasks: Iterable[T], workers: int, timeout: float | None = None
) -> Iterator[R | Failure]:
    """``fn(task)`` for each task, in task order, in ``workers`` forked processes; a task whose worker dies
    or that runs longer than ``timeout`` seconds (None or 0: no limit) yields a :class:`Failure` instead.

    ``fn``, and what the parent holds, is inherited by fork (module functions, closures, monkeypatches all
    work); tasks and results travel pickled. At most ``2 * workers`` tasks are started ahead of the one
    being yielded (results that finish early wait in memory). Closing the iterator early (or an
    exception in the caller) kills the workers.
    """
    if workers < 1:
        raise ValueError(f"need workers >= 1, got {workers}")
    ctx = mp.get_context("fork")
    todo = enumerate(tasks)
    pool: list[_Worker] = []
    done: dict[int, Any] = {}  # finished tasks waiting for their turn
    sent = yielded = 0
    exhausted = False
    try:
        while True:
            while yielded in done:
                yield done.pop(yielded)
                yielded += 1
            # hand out tasks: to an idle worker, or a new one while fewer than `workers` exist
            while not exhausted and sent - yielded < 2 * workers:
                worker = next((w for w in pool if w.index is None), None)
                if worker is None and len(pool) < workers:
                    worker = _Worker(ctx, fn, [w.conn for w in pool])
                    pool.append(worker)
                if worker is None:
                    break
                try:
                    index, task = next(todo)
                except StopIteration:
                    exhausted = True
                    break
                worker.start(index, task, timeout)
                sent += 1
            if exhausted and yielded == sent:
                return
            busy = [w for w in pool if w.index is not None]  # never empty: task `yielded` was sent, is not done
            deadline = min(w.deadline for w in busy)
            wait([w.conn for w in busy] + [w.proc.sentinel for w in busy],
                 None if deadline == math.inf else max(0.0, deadline - time.monotonic()))  # fmt: skip
            now = time.monotonic()
            for w in busy:
                index = w.index
                over, out = w.outcome(now)
                if over:
                    done[index] = out
            pool = [w for w in pool if not w.conn.closed]  # a dead or killed worker is replaced when needed
    finally:
        for w in pool:
            w.close(kill=w.index is not None)
