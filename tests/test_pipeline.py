"""`remn.inference.pipeline`: frames read ahead on a thread, results written behind."""
import itertools
import threading
import time

import pytest

from remn.inference.pipeline import BackgroundWriter, Prefetcher


class CountingSource:
    """Yields 0, 1, 2, ... (forever, or `length` items), counting how many were produced."""

    def __init__(self, length=None, fail_at=None):
        self.length, self.fail_at, self.produced = length, fail_at, 0

    def __iter__(self):
        for index in itertools.count() if self.length is None else range(self.length):
            if index == self.fail_at:
                raise ValueError(f"cannot read frame {index}")
            self.produced += 1
            yield index


def wait_until(condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return condition()


@pytest.mark.parametrize("length, depth", [(0, 1), (1, 1), (7, 2), (50, 4)])
def test_prefetcher_yields_every_item_in_order(length, depth):
    with Prefetcher(CountingSource(length), depth=depth) as items:
        assert list(items) == list(range(length))
        assert next(items, "end") == "end"  # exhausted stays exhausted


def test_prefetcher_reads_at_most_depth_ahead():
    source = CountingSource()  # endless
    with Prefetcher(source, depth=3) as items:
        assert next(items) == 0
        assert wait_until(lambda: source.produced >= 4)
        time.sleep(0.2)  # the reader had time to run further ahead, were it unbounded
        # 1 consumed + 3 queued + at most 1 held by the reader waiting for room
        assert source.produced <= 5


def test_prefetcher_raises_the_source_error_at_its_position():
    consumed = []
    with pytest.raises(ValueError, match="cannot read frame 3"):
        with Prefetcher(CountingSource(10, fail_at=3), depth=2) as items:
            for item in items:
                consumed.append(item)
    assert consumed == [0, 1, 2]


def test_prefetcher_close_stops_an_endless_reader():
    prefetcher = Prefetcher(CountingSource(), depth=2)
    assert next(prefetcher) == 0
    prefetcher.close()
    assert not prefetcher._thread.is_alive()
    assert next(prefetcher, "end") == "end"


def test_prefetcher_rejects_a_bad_depth():
    with pytest.raises(ValueError, match="depth must be >= 1"):
        Prefetcher([], depth=0)


def test_writer_runs_every_write_before_close_returns():
    done = []
    lock = threading.Lock()

    def write(index):
        time.sleep(0.002)
        with lock:
            done.append(index)

    with BackgroundWriter(workers=2, max_pending=3) as writer:
        for index in range(20):
            writer.submit(write, index)
            assert len(writer._pending) <= 3
    assert sorted(done) == list(range(20))


def test_writer_raises_a_failed_write():
    def write(index):
        if index == 2:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with BackgroundWriter(workers=1, max_pending=2) as writer:
            for index in range(6):
                writer.submit(write, index)


def test_writer_finishes_submitted_writes_when_the_caller_fails():
    release = threading.Event()
    done = []

    def write(index):
        release.wait(5)
        done.append(index)

    with pytest.raises(RuntimeError, match="the model failed"):
        with BackgroundWriter(workers=1, max_pending=8) as writer:
            for index in range(3):
                writer.submit(write, index)
            release.set()
            raise RuntimeError("the model failed")
    assert done == [0, 1, 2]  # results already produced are not lost


def test_writer_rejects_bad_sizes():
    with pytest.raises(ValueError, match="must be >= 1"):
        BackgroundWriter(workers=0)
