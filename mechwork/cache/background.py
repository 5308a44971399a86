"""Running an iterator ahead of its consumer on a daemon thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


class Background(Iterator[T]):
    """Iterate ``source`` on a daemon thread, up to ``depth`` items ahead of the consumer.

    Used for the token windows of :func:`mechwork.cache.collect`: tokenising and packing text (the Rust
    tokenizer and torch release the GIL) overlaps the forward pass instead of stalling the device between
    batches. Items come out in order; an exception raised by ``source`` is re-raised in the consumer at the
    point where the item would have come; :meth:`close` (or garbage collection of a generator wrapping it)
    stops the thread at its next hand-over.
    """

    def __init__(self, source: Iterator[T], depth: int = 4, *, name: str = "mechwork-background") -> None:
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._run, args=(source,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterator[T]) -> None:
        try:
            for item in source:
                if not self._put(("item", item)):
                    return
            self._put(("end", _DONE))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(("error", e))

    def __iter__(self) -> Background[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        kind, value = self._q.get()
        if kind == "item":
            return value  # type: ignore[return-value]
        self._finished = True
        self._stop.set()
        if kind == "error":
            raise value  # type: ignore[misc]
        raise StopIteration

    def close(self, timeout: float = 30.0) -> None:
        """Stop the producer thread, drop what it had prepared and wait (up to ``timeout`` s) for it to end.

        Waiting matters on error paths: a daemon thread still inside a torch or tokenizer call when the
        interpreter exits can abort the whole process instead of letting it exit with its error.
        """
        self._finished = True
        self._stop.set()
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __del__(self) -> None:
        self._stop.set()
