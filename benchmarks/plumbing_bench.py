"""Library plumbing vs the hand-rolled code it replaced (issue 11, item 3).

1. Gradient-norm clipping of one SAE's parameters: ``torch.nn.utils.clip_grad_norm_(foreach=True)`` (what the
   trainer uses now) vs the hand-rolled ``torch._foreach_norm`` version it replaced (kept here verbatim as the
   peer), in both regimes: gradients above the threshold (scaled) and below it (left alone). For scale, the
   time of the SAE's encoder matmul on the same batch is shown beside them.
2. Running an iterator ahead of its consumer: :class:`mechwork.cache.background.Background` (a one-thread
   ``concurrent.futures`` executor, also behind the cache writer) vs the queue + daemon-thread class it replaced
   (kept here as the peer), on a producer and a consumer that each do a little torch work per item, and the
   per-item overhead on an iterator of plain integers.

Writes ``benchmarks/results/plumbing.json``. Run: ``python benchmarks/plumbing_bench.py [--quick]``.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import print_table, timeit, write_results  # noqa: E402

T = TypeVar("T")
_DONE = object()


class QueueThreadPrefetch(Iterator[T]):
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

    def __iter__(self) -> QueueThreadPrefetch[T]:
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


@torch.no_grad()
def hand_rolled_clip(params: list[Tensor], max_norm: float) -> None:
    """The trainer's previous clipping (peer): total norm from ``torch._foreach_norm``, skip the scale on CPU."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    coef = max_norm / (norm + 1e-6)
    if grads[0].device.type == "cpu":
        if float(coef) < 1.0:
            torch._foreach_mul_(grads, float(coef))
    else:
        torch._foreach_mul_(grads, coef.clamp(max=1.0))


def library_clip(params: list[Tensor], max_norm: float) -> None:
    torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)


def sae_params(d: int, m: int, device: str) -> list[Tensor]:
    shapes = [(d, m), (m,), (m, d), (d,)]  # W_enc, b_enc, W_dec, b_dec
    ps = [torch.zeros(s, device=device, requires_grad=True) for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, device=device) * 1e-3
    return ps


def clip_rows(sizes: list[tuple[int, int]], device: str, repeat: int) -> list[dict]:
    return [row for d, m in sizes for row in clip_size(d, m, device, repeat)]


def clip_size(d: int, m: int, device: str, repeat: int) -> list[dict]:
    params = sae_params(d, m, device)
    grads0 = [p.grad.clone() for p in params]
    norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads0])))
    x = torch.randn(2048, d, device=device)  # the trainer's default batch
    W = params[0].detach()

    def reset() -> None:
        for p, g in zip(params, grads0):
            p.grad.copy_(g)

    # agreement: both clip to the same gradients
    reset()
    hand_rolled_clip(params, norm / 2)
    ref = [p.grad.clone() for p in params]
    reset()
    library_clip(params, norm / 2)
    err = max(float((p.grad - r).abs().max()) for p, r in zip(params, ref))
    t_reset = timeit(reset, repeat=repeat)
    t_enc = timeit(lambda: x @ W, repeat=3)
    rows = []
    for regime, max_norm in (("clipped", norm / 2), ("not clipped", norm * 2)):
        t_hand = timeit(lambda mn=max_norm: (reset(), hand_rolled_clip(params, mn)), repeat=repeat)
        t_lib = timeit(lambda mn=max_norm: (reset(), library_clip(params, mn)), repeat=repeat)
        rows.append(
            {
                "device": device,
                "d_in x d_sae": f"{d}x{m}",
                "regime": regime,
                "hand_rolled_ms": 1e3 * max(t_hand - t_reset, 0.0),
                "clip_grad_norm_ms": 1e3 * max(t_lib - t_reset, 0.0),
                "library/hand": (t_lib - t_reset) / max(t_hand - t_reset, 1e-9),
                "encoder_matmul_ms (2048 tokens)": 1e3 * t_enc,
                "max_abs_diff": err,
            }
        )
    return rows


def prefetch_rows(n_items: int, repeat: int) -> list[dict]:
    from mechwork.cache.background import Background

    def produce(n: int, work: bool) -> Iterator[torch.Tensor | int]:
        for i in range(n):
            yield torch.randn(256, 256).sum() if work else i  # tokenising/packing stand-in

    def consume(it: Iterator, work: bool) -> None:
        for _ in it:
            if work:
                torch.randn(256, 256).sum()  # forward-pass stand-in
        getattr(it, "close", lambda: None)()

    rows = []
    for work in (True, False):
        n = n_items if work else 20 * n_items
        t_seq = timeit(lambda w=work, n=n: consume(produce(n, w), w), repeat=repeat)
        t_old = timeit(lambda w=work, n=n: consume(QueueThreadPrefetch(produce(n, w), depth=4), w), repeat=repeat)
        t_new = timeit(lambda w=work, n=n: consume(Background(produce(n, w), depth=4), w), repeat=repeat)
        rows.append(
            {
                "items": n,
                "per item work": "256x256 randn+sum each side" if work else "none (overhead)",
                "sequential_ms": 1e3 * t_seq,
                "queue_thread_ms": 1e3 * t_old,
                "futures_ms": 1e3 * t_new,
                "futures/queue_thread": t_new / t_old,
                "us_per_item futures": 1e6 * t_new / n,
                "us_per_item queue_thread": 1e6 * t_old / n,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args, _ = ap.parse_known_args(argv)
    torch.manual_seed(0)
    sizes = [(64, 2048), (256, 8192)] if args.quick else [(64, 2048), (256, 8192), (512, 16384)]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for dev in devices:
        rows += clip_rows(sizes if dev == "cpu" else sizes + [(2048, 65536)], dev, repeat=5 if args.quick else 15)
    print_table(rows, title="gradient-norm clipping of one SAE (times exclude restoring the gradients)")
    pre = prefetch_rows(200 if args.quick else 1000, repeat=3 if args.quick else 5)
    print_table(pre, title="iterator run ahead on a background thread")
    write_results(
        "plumbing",
        {"clip": rows, "prefetch": pre, "note": "shared machine (2 cores, 8 helpers): compare ratios, not absolutes"},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
