"""The ordered streaming map: order, bounded memory, errors carried back to the writer."""

from __future__ import annotations

import random
import threading
import time

import pytest

from octoray.engine.executors import LocalExecutor
from octoray.engine.stream import default_window, ordered_map


def slow_square(x):
    time.sleep(random.random() * 0.003)
    return x * x


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_results_come_back_in_input_order(threads):
    with LocalExecutor(threads) as executor:
        assert list(ordered_map(slow_square, ((i,) for i in range(300)), executor)) == [i * i for i in range(300)]


def test_reader_never_runs_more_than_the_window_ahead():
    read = 0
    written = 0
    most_ahead = 0
    lock = threading.Lock()

    def jobs():
        nonlocal read, most_ahead
        for i in range(200):
            with lock:
                read += 1
                most_ahead = max(most_ahead, read - written)
            yield (i,)

    with LocalExecutor(2) as executor:
        for _ in ordered_map(slow_square, jobs(), executor):
            written += 1
    assert most_ahead <= default_window(2) == 7


class Boom(Exception):
    pass


def test_a_worker_error_reaches_the_writer_and_stops_reading():
    consumed = []

    def fail_at_50(x):
        if x == 50:
            raise Boom(x)
        return x

    def jobs():
        for i in range(10_000):
            consumed.append(i)
            yield (i,)

    out = []
    with LocalExecutor(2) as executor, pytest.raises(Boom):
        for value in ordered_map(fail_at_50, jobs(), executor):
            out.append(value)
    assert out == list(range(50))
    assert len(consumed) < 50 + default_window(2) + 1
