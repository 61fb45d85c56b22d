"""Overlapping a video's file I/O with segmentation: frames decode ahead, results write behind.

At 480p, decoding a JPEG frame takes about 4 ms and writing its palette PNG about 2 ms on
one CPU core: done in line, they cost about as much as a fused GPU step. Pillow and
PyTorch release the GIL in their C code, so here decoding and encoding run on background
threads while the main thread steps the model (and waits on the GPU).

- `Prefetcher(frames, depth)`: iterates `frames` on a thread, at most `depth` items ahead.
  The consumer gets the same items in the same order, and an error raised by the source
  is raised in the consumer at the position it happened (same type, same message).
- `BackgroundWriter(workers, max_pending)`: runs write calls on a thread pool; a full
  queue makes `submit` wait for the oldest write, so memory stays bounded. The first
  failed write is raised by the next `submit` or by `close`. Writes are atomic
  (`remn.data.atomic`): a failure never leaves a half-written file.

Both are context managers: leaving the block (normally or by an error) stops the reader
and waits for the writes already submitted.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from queue import Full, Queue
from typing import Callable, Iterable, Iterator, TypeVar

Item = TypeVar("Item")

_POLL_SECONDS = 0.05  # how often a blocked reader checks whether the consumer stopped
_END = object()  # queue marker: the source is exhausted (or failed, with the error beside it)


class Prefetcher(Iterator[Item]):
    """Read `source` up to `depth` items ahead on a background thread."""

    def __init__(self, source: Iterable[Item], depth: int = 4):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._queue: Queue = Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._read, args=(iter(source),), name="remn-prefetch", daemon=True)
        self._thread.start()

    def _put(self, entry) -> bool:
        """Queue `entry`, waiting for room; False when the consumer stopped meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=_POLL_SECONDS)
                return True
            except Full:
                continue
        return False

    def _read(self, items: Iterator[Item]) -> None:
        try:
            for item in items:
                if not self._put((item, None)):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, who raises it
            self._put((_END, err))
            return
        finally:
            close = getattr(items, "close", None)  # a generator releases its files (a video container) now
            if close is not None:
                close()
        self._put((_END, None))

    def __next__(self) -> Item:
        if self._finished:
            raise StopIteration
        item, error = self._queue.get()  # the reader always ends with _END unless closed
        if item is _END:
            self._finished = True
            if error is not None:
                raise error
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop reading ahead and wait for the reader thread (its current item is dropped)."""
        self._stop.set()
        self._thread.join()
        self._finished = True

    def __enter__(self) -> "Prefetcher[Item]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BackgroundWriter:
    """Run write calls on `workers` threads, at most `max_pending` waiting or running."""

    def __init__(self, workers: int = 2, max_pending: int = 8):
        if workers < 1 or max_pending < 1:
            raise ValueError(f"workers and max_pending must be >= 1, got {workers} and {max_pending}")
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="remn-writer")
        self._pending: deque[Future] = deque()

    def submit(self, write: Callable[..., object], *args) -> None:
        """Queue `write(*args)`; raises the error of an earlier write that failed."""
        self._collect_done()
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(write, *args))

    def _collect_done(self) -> None:
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()

    def close(self) -> None:
        """Wait for every submitted write; raises the first error among them."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
            return
        # Leaving on an error: the submitted writes still finish (each is atomic; their results are
        # good), and the original error is the one raised.
        self._pool.shutdown(wait=True)
        self._pending.clear()
