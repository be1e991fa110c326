"""The writer thread: where the store work of async callers runs, off the event loop.

The store is synchronous (SQLite): its wait for the write lock (a bounded, jittered retry that
sleeps), its ``COMMIT`` and SQLite's automatic WAL checkpoint inside it (a device flush) would
stall every coroutine of the loop if they ran on it. Async entry points (``Guard.aauthorize``,
``async with guard.task(...)``, the adapters' async hooks) hand that work to one thread per
guard and await it: a single thread, so the jobs of one guard run in the order they were
submitted (a task's end never overtakes a call of that task), and the loop keeps running.

Each job runs in a copy of the caller's context (the current task, the running call). A job
cannot be stopped once it runs: when the awaiting coroutine is cancelled the job completes
anyway, and its ``abandon`` callback (in the writer thread) undoes what nobody will use (an
allowed call is recorded as not run; a started task is ended). A job cancelled before it
started never runs.

The writer thread also hands the GIL back to the loop: a thread waiting for the GIL asks for
it only after ``sys.getswitchinterval()`` (5 ms) without a switch, and its wait starts over
each time the holder lets go and takes it back at once, which a writer thread does around
every SQLite statement (the ``sqlite3`` module releases the GIL while SQLite works). A busy
writer thread could so keep the loop waiting for many milliseconds. So when the writer has run
jobs back to back for ``pace`` seconds (1 ms), it sleeps ``rest`` (50 µs) before the next one:
long enough for the loop thread to take the GIL, at most about 5 to 10 % of a saturated writer's
throughput, nothing when the writer keeps up (it then waits for work, which lets go of the
GIL for good).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

__all__ = ["WriterThread"]

_T = TypeVar("_T")


class _Pacer:
    """Lets the writer thread give the GIL up for a moment after ``pace`` seconds of jobs run
    back to back (see the module docstring). Used by the one writer thread only."""

    __slots__ = ("busy_since", "last_end", "pace", "rest")

    def __init__(self, pace: float = 1e-3, rest: float = 50e-6) -> None:
        self.pace, self.rest = pace, rest
        self.busy_since = self.last_end = 0.0

    def before(self) -> None:
        now = time.perf_counter()
        if now - self.last_end > self.rest:  # it waited for this job: the loop had its turn
            self.busy_since = now
        elif now - self.busy_since >= self.pace:
            time.sleep(self.rest)  # lets go of the GIL long enough for a waiting thread
            self.busy_since = time.perf_counter()

    def after(self) -> None:
        self.last_end = time.perf_counter()


class _Job(Generic[_T]):
    """One piece of store work; delivers its result, or abandons it when nobody waits."""

    __slots__ = (
        "abandon", "abandoned", "args", "context", "delivered", "fn", "kwargs", "lock",
        "pacer", "result",
    )  # fmt: skip

    def __init__(
        self,
        fn: Callable[..., _T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        abandon: Callable[[_T], object] | None,
        pacer: _Pacer | None = None,
    ) -> None:
        self.pacer = pacer
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.abandon = abandon
        self.context = contextvars.copy_context()
        self.lock = threading.Lock()
        self.abandoned = False
        self.delivered = False
        self.result: _T | None = None

    def __call__(self) -> _T:  # in the writer thread
        pacer = self.pacer
        if pacer is None:
            result = self.context.run(self.fn, *self.args, **self.kwargs)
        else:
            pacer.before()
            try:
                result = self.context.run(self.fn, *self.args, **self.kwargs)
            finally:
                pacer.after()
        with self.lock:
            if not self.abandoned:
                self.delivered = True
                self.result = result
                return result
        self._abandon(result)
        return result

    def give_up(self) -> None:
        """The awaiting coroutine was cancelled (on the loop) while the job ran or after it
        returned: abandon its result now if it was delivered, else when it is."""
        with self.lock:
            self.abandoned = True
            delivered, result = self.delivered, self.result
            self.result = None
        if delivered:
            self._abandon(result)  # type: ignore[arg-type]  # delivered: fn returned it

    def _abandon(self, result: _T) -> None:
        if self.abandon is not None:
            self.context.run(self.abandon, result)


class WriterThread:
    """One thread that runs store work for async callers (see the module docstring).

    Started on first use; a forked child starts its own; :meth:`close` stops it."""

    def __init__(self, name: str = "toolguard-writer", *, side_workers: int = 8) -> None:
        self._name = name
        self._side_workers = side_workers
        self._executor: ThreadPoolExecutor | None = None
        self._side: ThreadPoolExecutor | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._pacer = _Pacer()

    def _get(self, side: bool = False) -> ThreadPoolExecutor:
        pid = os.getpid()
        executor = self._side if side else self._executor
        if executor is not None and self._pid == pid:
            return executor
        with self._lock:
            if self._pid != pid:  # a fork's copies have no threads
                self._executor = self._side = None
                self._pid = pid
            if side:
                if self._side is None:
                    self._side = ThreadPoolExecutor(
                        self._side_workers, thread_name_prefix=f"{self._name}-side"
                    )
                return self._side
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix=self._name)
            return self._executor

    async def run(
        self,
        fn: Callable[..., _T],
        /,
        *args: Any,
        abandon: Callable[[_T], object] | None = None,
        always: bool = False,
        side: bool = False,
        **kwargs: Any,
    ) -> _T:
        """``fn(*args, **kwargs)`` on the writer thread, in a copy of this context, awaited.

        If this coroutine is cancelled, ``fn`` still completes (unless it had not started) and
        ``abandon(result)`` runs with its result; the cancellation goes on. With ``always``
        (a task's end: it must be written), a job that had not started runs all the same.
        With ``side``, the job runs on one of a few side threads instead, unordered: for work
        that may wait long (a call held for a person's approval) and must not hold up the
        writer thread's queue (the store's own checks order it against a task's end)."""
        job = _Job(fn, args, kwargs, abandon, None if side else self._pacer)
        future = self._get(side).submit(job)
        waiter = asyncio.wrap_future(future)
        try:
            # cancelling this await cancels ``future`` if the job has not started (it never
            # runs) unless ``always``; a running job cannot be stopped, its result is dropped
            return await (asyncio.shield(waiter) if always else waiter)
        except asyncio.CancelledError:
            if always:
                waiter.add_done_callback(_retrieve)
            if not future.cancelled():  # it runs, ran or will run: undo what nobody uses
                job.give_up()
            raise

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        """``fn(*args, **kwargs)`` on the writer thread, in a copy of this context, not awaited
        (for a loop callback that cannot await): it runs after every job submitted before it,
        :meth:`close` waits for it, and its exception is the returned future's."""
        return self._get().submit(_Job(fn, args, kwargs, None, self._pacer))

    def close(self) -> None:
        """Wait for the jobs submitted so far and stop the thread (a later job starts a new
        one). Never from the writer thread itself."""
        with self._lock:
            executors = [e for e in (self._executor, self._side) if e is not None]
            self._executor = self._side = None
            mine = self._pid == os.getpid()
        if mine:
            for executor in executors:
                executor.shutdown(wait=True)


def _retrieve(waiter: asyncio.Future[Any]) -> None:
    """Mark the exception of a job nobody awaits any more as retrieved (asyncio would log it;
    the job itself reports its failures, e.g. a task end that could not be written is kept
    and retried by the store)."""
    if not waiter.cancelled():
        waiter.exception()
