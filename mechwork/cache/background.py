"""Work on one background thread, in order: the cache's single mechanism for overlapping I/O with compute.

:class:`Worker` is a one-thread :class:`concurrent.futures.ThreadPoolExecutor` that runs calls in submission
order and bounds how many are queued; :class:`Background` runs an iterator ahead of its consumer on it (token
windows of :func:`mechwork.cache.collect`, batches of the store's loader) and the cache writer
(:class:`mechwork.cache.writer.Pipeline`) runs its disk writes behind the producer on it.

Cost (benchmarks/plumbing_bench.py, shared 2-core machine): a future per item costs about 50 us against 6 us for
the queue + daemon-thread classes this replaced, measured on an iterator of bare integers; with a few ms of torch
work per item on each side (the real case: token windows, store batches) it was 0.83x their time. Both are far
below one batch's cost, so the one mechanism is kept.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

T = TypeVar("T")


class Worker:
    """One background thread that runs submitted calls in order, at most ``depth`` of them queued.

    :meth:`submit` blocks while ``depth`` calls wait (for the oldest to finish); :meth:`close` cancels what has
    not started, waits (up to ``timeout`` s) for the running call and ends the thread. Waiting matters on error
    paths: a thread still inside a torch or tokenizer call when the interpreter exits can abort the process
    instead of letting it exit with its error.
    """

    def __init__(self, depth: int, *, name: str) -> None:
        self.depth = max(1, depth)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queued: deque[tuple[Future, Callable[[], None] | None]] = deque()
        self.thread: threading.Thread = self._pool.submit(threading.current_thread).result()

    def submit(self, fn: Callable[..., T], *args: Any, on_cancel: Callable[[], None] | None = None) -> Future[T]:
        """Queue ``fn(*args)``; ``on_cancel`` is called if :meth:`close` drops it before it ran."""
        while self._queued and self._queued[0][0].done():
            self._queued.popleft()
        while len(self._queued) > self.depth:
            wait([self._queued.popleft()[0]])
        fut = self._pool.submit(fn, *args)
        self._queued.append((fut, on_cancel))
        return fut

    def drain(self) -> None:
        """Wait for every queued call."""
        wait([f for f, _ in self._queued])
        self._queued.clear()

    def close(self, timeout: float | None = 30.0) -> None:
        """Drop the calls that have not started, wait for the running one and end the thread."""
        running = []
        for fut, on_cancel in self._queued:
            if fut.cancel():
                if on_cancel is not None:
                    on_cancel()
            else:
                running.append(fut)
        self._queued.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.thread is not threading.current_thread():
            wait(running, timeout)
            self.thread.join(timeout)


class Background(Iterator[T]):
    """Iterate ``source`` on a :class:`Worker` thread, up to ``depth`` items ahead of the consumer.

    Items come out in order; an exception raised by ``source`` is re-raised in the consumer at the point where
    the item would have come; :meth:`close` (or garbage collection) stops the producer at its next item and
    joins its thread. Tokenising and packing text (the Rust tokenizer and torch release the GIL) thus overlap
    the forward pass instead of stalling the device between batches.
    """

    def __init__(self, source: Iterable[T], depth: int = 4, *, name: str = "mechwork-background") -> None:
        self._it = iter(source)
        self._worker = Worker(depth, name=name)
        self._thread = self._worker.thread
        self._finished = False
        self._ahead: deque[Future[tuple[bool, Any]]] = deque(
            self._worker.submit(self._step) for _ in range(self._worker.depth)
        )

    def _step(self) -> tuple[bool, Any]:
        try:
            return True, next(self._it)
        except StopIteration:
            return False, None

    def __iter__(self) -> Background[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        try:
            more, item = self._ahead.popleft().result()
        except BaseException:
            self.close()
            raise
        if not more:
            self.close()
            raise StopIteration
        self._ahead.append(self._worker.submit(self._step))
        return item

    def close(self, timeout: float = 30.0) -> None:
        """Stop the producer, drop what it had prepared and wait (up to ``timeout`` s) for its thread to end."""
        self._finished = True
        self._ahead.clear()
        self._worker.close(timeout)

    def __del__(self) -> None:
        if not getattr(self, "_finished", True):
            self._finished = True
            self._worker.close(timeout=0)
