"""The ordered streaming map: order, bounded memory, errors carried back to the writer."""

from __future__ import annotations

import random
import threading
import time

import pytest

from octoray.engine.executors import LocalExecutor
from octoray.engine.stream import batched, default_window, ordered_map


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


class GroupingExecutor(LocalExecutor):
    """A thread pool that asks, as the Dask executor does, for several jobs per task."""

    in_process = False

    def __init__(self, threads: int, jobs_per_task: int):
        super().__init__(threads)
        self.jobs_per_task = jobs_per_task
        self.sizes: list[int] = []

    def submit(self, fn, *args):
        import pickle

        group, task = pickle.loads(pickle.dumps(args))  # as if it travelled to a worker
        self.sizes.append(len(group.jobs))
        return super().submit(fn, group, task)


@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 23, 24, 25, 100])
def test_jobs_grouped_per_task_come_back_one_result_per_job_in_order(count):
    """Groups of 8, then the stream's last jobs (a group's worth per worker) in shrinking
    groups that end one job per task, so that the workers finish together."""
    with GroupingExecutor(2, jobs_per_task=8) as executor:
        out = list(ordered_map(slow_square, ((i,) for i in range(count)), executor))
    assert out == [i * i for i in range(count)]
    sizes = executor.sizes
    assert sum(sizes) == count and all(1 <= n <= 8 for n in sizes)
    assert sizes == sorted(sizes, reverse=True)
    tail = 8 * 2
    assert sizes[:max(0, count - tail) // 8] == [8] * (max(0, count - tail) // 8)
    assert sizes[-min(count, 4):] == [1] * min(count, 4)
    groups = max(0, count - tail) // 8
    assert len(sizes) <= groups + (count - 8 * groups)  # never more tasks than one per tail job
    if count == 100:
        assert len(sizes) < groups + (count - 8 * groups)  # fewer, here


def identity(value):
    return value


def test_a_long_streams_groups_grow_while_every_slot_keeps_four_and_memory_stays_bounded():
    """Where a group costs the client a request (fgzip's stream on Dask), groups start at the
    usual size, so that a short stream still reaches every worker, and grow as the stream
    proves long, up to the executor's largest; a larger group counts for more against the
    window, so the input in flight stays within twice the usual (and a group per slot)."""
    read = [0]

    def jobs():
        for i in range(2000):
            read[0] += 1
            yield (i,)

    out, most = [], 0
    with GroupingExecutor(2, jobs_per_task=4) as executor:
        executor.largest_jobs_per_task = 16
        for value in ordered_map(identity, jobs(), executor):
            out.append(value)
            most = max(most, read[0] - len(out))  # jobs read but not yet written
    sizes = executor.sizes
    window, slots = default_window(2), 2
    largest = min(16, 2 * window * 4 // (slots + 2))  # 14: twice the usual input in flight
    assert out == list(range(2000)) and sum(sizes) == 2000
    assert sizes[:8] == [4] * 8 and max(sizes) == largest and sizes.count(largest) > 80
    growing = sizes[:sizes.index(largest) + 1]
    assert growing == sorted(growing)
    assert sizes[-4:] == [1, 1, 1, 1]  # the tail still ends one job per task
    assert most <= 2 * window * 4 + largest + 4 * slots  # the window, the group being read, the tail
    plain = [len(group) for group in batched(range(100), 4, 8)]
    assert max(plain) == 4  # no growth unless asked


def head(data, n):
    return bytes(data)[:n]


def test_a_group_carries_memoryviews():
    data = bytearray(b"chunk of input")
    with GroupingExecutor(2, jobs_per_task=4) as executor:
        out = list(ordered_map(head, ((memoryview(data), n) for n in range(6)), executor))
    assert out == [bytes(data)[:n] for n in range(6)]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_group_pickles_its_buffers_with_any_protocol(protocol):
    import pickle

    from octoray.engine.stream import JobGroup

    chunk = bytearray(b"x" * 100_000)
    group = JobGroup([(memoryview(chunk), b"dict", 6, False), (memoryview(chunk)[:10], None, 6, True)])
    out = pickle.loads(pickle.dumps(group, protocol=protocol))
    assert [(bytes(a), *rest) for a, *rest in out.jobs] == \
        [(bytes(chunk), b"dict", 6, False), (b"x" * 10, None, 6, True)]


def test_a_group_sends_its_chunks_out_of_band():
    """As Dask's comms pickle: the chunk travels as a buffer of its own, not in the stream."""
    import pickle

    from octoray.engine.stream import JobGroup

    chunk = bytearray(b"y" * 1_000_000)
    buffers = []
    stream = pickle.dumps(JobGroup([(memoryview(chunk), None, 6, True)]), protocol=5,
                          buffer_callback=buffers.append)
    assert len(stream) < 1_000 and len(buffers) == 1
    out = pickle.loads(stream, buffers=[b.raw() for b in buffers])
    assert bytes(out.jobs[0][0]) == bytes(chunk)


CYCLE_AFTER_A_FAILED_SEND = """
import gc, pickle, sys
import numpy as np
from octoray.engine.stream import JobGroup
from octoray.formats.gzip import DeflatedChunk
from octoray.engine.dask_worker import DeflatedChunks
sys.unraisablehook = lambda hook: print("unraisable:", hook.exc_value, file=sys.stderr)
for _ in range(3):
    view = memoryview(np.empty(1 << 20, dtype=np.uint8)).cast("B")[:100_000]
    for message in (JobGroup([(view, None, 6, True)]), DeflatedChunks([DeflatedChunk(view, 0, 1, True)])):
        frames = []
        pickle.dumps(message, protocol=5, buffer_callback=frames.append)
        cycle = [frames, view]
        cycle.append(cycle)
        del frames, cycle
    del view, message
    gc.collect()
print("collected")
"""


def test_buffers_sent_out_of_band_survive_the_garbage_collector_clearing_a_cycle():
    """Dask's frames left in a cycle (the traceback of a send to a worker that was killed)
    hold our chunks' memoryviews and the PickleBuffers over them; collecting that cycle must
    neither print `memoryview has 1 exported buffer` nor crash (CPython issue 77894)."""
    import subprocess
    import sys

    from conftest import ROOT

    done = subprocess.run([sys.executable, "-c", CYCLE_AFTER_A_FAILED_SEND], capture_output=True, cwd=ROOT)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"collected\n", b"")


# --- the embedded engine's thread pool (octoray.engine.threadpool) ---

def test_pool_runs_every_task_on_its_threads_and_returns_each_value():
    import _thread

    from octoray.engine.threadpool import ThreadPool

    def count_reaches(n):  # a raw thread counts from its first step to its last
        deadline = time.monotonic() + 10
        while _thread._count() != n and time.monotonic() < deadline:
            time.sleep(0.01)
        return _thread._count() == n

    before = _thread._count()
    pool = ThreadPool(3)
    gate = threading.Event()
    try:
        assert _thread._count() == before  # no thread before a task needs one
        for _ in range(3):  # one task at a time, each done before the next: one thread serves them all
            assert pool.submit(lambda: 1).result() == 1
        assert count_reaches(before + 1)
        tasks = [pool.submit(lambda x: (gate.wait(10) and x * x, _thread.get_ident()), i) for i in range(50)]
        assert count_reaches(before + 3)  # tasks waiting: threads up to the limit, no more
        gate.set()
        results = [task.result() for task in tasks]
    finally:
        gate.set()
        pool.shutdown()
    assert [value for value, _ in results] == [i * i for i in range(50)]
    assert len({ident for _, ident in results} - {_thread.get_ident()}) <= 3
    assert count_reaches(before)  # shutdown ended them


def test_pool_shuts_down_twice():
    from octoray.engine.threadpool import ThreadPool

    pool = ThreadPool(2)
    assert pool.submit(sum, (1, 2)).result() == 3
    pool.shutdown()
    pool.shutdown()


def test_pool_raises_a_task_error_from_result_and_keeps_working():
    from octoray.engine.threadpool import ThreadPool

    pool = ThreadPool(2)
    try:
        failing = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result()
        assert pool.submit(lambda: "next").result() == "next"
    finally:
        pool.shutdown()


def test_pool_cancel_and_shutdown_skip_tasks_not_started():
    from octoray.engine.threadpool import ThreadPool

    started, gate, ran = threading.Event(), threading.Event(), []
    pool = ThreadPool(1)
    blocker = pool.submit(lambda: started.set() or gate.wait())
    waiting = [pool.submit(ran.append, i) for i in range(5)]
    assert started.wait(10)
    assert waiting[0].cancel() and not blocker.cancel()
    threading.Timer(0.2, gate.set).start()
    pool.shutdown()  # cancels the other four, lets the running one finish
    assert blocker.result() is True and ran == []
    for task in waiting:
        with pytest.raises(RuntimeError, match="cancelled"):
            task.result()


def test_pool_initializer_failure_reaches_every_task():
    from octoray.engine.threadpool import ThreadPool

    def broken():
        raise OSError("no card")

    pool = ThreadPool(2, initializer=broken)
    try:
        for task in [pool.submit(int, "1") for _ in range(4)]:
            with pytest.raises(OSError, match="no card"):
                task.result()
    finally:
        pool.shutdown()


def test_fgzip_compresses_and_decodes_without_importing_concurrent_futures(tmp_path):
    """The embedded engine's threads come from octoray.engine.threadpool: fgzip's start-up
    does not import concurrent.futures (and logging with it), and both directions use the pool."""
    import json
    import subprocess
    import sys

    data = tmp_path / "data"
    data.write_bytes(random.Random(1).randbytes(200_000) * 20)
    probe = """
import json, sys
from octoray.engine import threadpool
submitted, submit = [0], threadpool.ThreadPool.submit
def counted(pool, *args):
    submitted[0] += 1
    return submit(pool, *args)
threadpool.ThreadPool.submit = counted
from octoray.cli.fgzip import main
statuses = [main(["-p", "2", "-b", "64", "-k", sys.argv[1]]), main(["-p", "2", "-t", sys.argv[1] + ".gz"])]
print(json.dumps([statuses, submitted[0], [m for m in ("concurrent.futures", "logging") if m in sys.modules]]))
"""
    out = subprocess.run([sys.executable, "-c", probe, str(data)], capture_output=True, text=True, check=True)
    statuses, submitted, imported = json.loads(out.stdout)
    assert statuses == [0, 0] and imported == []
    assert submitted > 2 * 60  # 4 MB in 64 KiB chunks, compressed and then decoded on the pool


def test_requests_grow_with_a_file_the_workers_read_while_every_slot_keeps_four():
    """Where the workers read the file, a request carries 8 jobs, more for a file large enough
    that every request slot still gets 4 requests, and never more than 32."""
    from octoray.engine.dask_executor import file_jobs_per_task

    assert file_jobs_per_task(10, 4) == 8  # a small file: the floor
    assert file_jobs_per_task(4 * 4 * 20, 4) == 20  # 4 slots x 4 requests x 20 jobs
    assert file_jobs_per_task(2048, 4) == 32  # 2 GB at 1 MiB jobs on two workers: the ceiling
    assert file_jobs_per_task(512, 16) == 8  # eight cards on 512 MB stay at the floor
    assert file_jobs_per_task(10**6, 0) == 32


def test_a_long_tail_shrinks_to_single_jobs_in_few_tasks():
    """32 jobs a task on 4 request slots reads 128 jobs ahead: they used to go as 128 tasks
    of one job (each costing the client a request); now the groups shrink to single jobs."""
    sizes = [len(group) for group in batched(range(1000), 32, 128)]
    assert sum(sizes) == 1000 and sizes == sorted(sizes, reverse=True) and max(sizes) == 32
    assert sizes[-4:] == [1, 1, 1, 1]
    tail_tasks = [n for n in sizes if n < 32]
    assert sum(tail_tasks) >= 100 and len(tail_tasks) < 60


def test_a_request_may_run_eight_times_the_slowest_recent_one_before_a_second_worker_is_asked():
    from collections import deque

    from octoray.engine.dask_requests import FIRST_PATIENCE, STALL_FACTOR, STALL_FLOOR, WorkerPool

    pool = WorkerPool.__new__(WorkerPool)  # its patience needs no cluster
    pool._durations = deque(maxlen=32)
    assert pool.patience() == FIRST_PATIENCE == 60  # cards load their overlays first
    pool._durations.extend([0.1, 0.3, 0.2])
    assert pool.patience() == FIRST_PATIENCE  # three answers are not yet a measure
    pool._durations.append(0.4)
    assert pool.patience() == STALL_FLOOR == 10
    pool._durations.append(5.0)
    assert pool.patience() == STALL_FACTOR * 5.0 == 40
    pool._durations.extend([0.1] * 32)  # the slow one has left the window
    assert pool.patience() == STALL_FLOOR


def _fake_pool(dask_requests, sent: list, workers: dict[str, float], silent: tuple = ()):
    """A WorkerPool over a stand-in for Dask's client: `workers` maps each address to the
    seconds its requests take; those in `silent` never answer Dask's identity call either."""
    import asyncio

    class Worker:
        def __init__(self, address):
            self.address = address

        async def octoray_run(self, payload):
            sent.append(self.address)
            await asyncio.sleep(workers[self.address])
            fn, args = payload.data
            return {"status": "OK", "result": fn(*args)}

        async def identity(self):
            await asyncio.sleep(3600 if self.address in silent else 0.001)
            return {}

    class Scheduler:
        async def identity(self):
            return {"workers": {address: {"nthreads": 1} for address in workers}}

    class Client:
        scheduler = Scheduler()

        def scheduler_info(self):
            return {"workers": {address: {"nthreads": 1} for address in workers}}

        def rpc(self, address):
            return Worker(address)

    class Executor:
        client, address, lost = Client(), "tcp://scheduler:1", False

        def _check_alive(self):
            pass

    return dask_requests.WorkerPool(Executor())


def _pool_with_a_frozen_worker(dask_requests, sent: list):
    """Two workers, one that never answers; (the pool, the frozen one's address)."""
    frozen = "tcp://frozen:1"
    return _fake_pool(dask_requests, sent, {frozen: 3600, "tcp://alive:1": 0.001}, silent=(frozen,)), frozen


class _Doubled:
    """A task: fn(*args) doubles its value."""
    fn = staticmethod(lambda value: value * 2)

    def __init__(self, value):
        self.args = (value,)


def _run_tasks(dask_requests, sent: list, n: int):
    """Run n tasks on a pool with a frozen worker; (results, seconds, stragglers left, pool, frozen)."""
    import asyncio

    async def main():
        pool, frozen = _pool_with_a_frozen_worker(dask_requests, sent)
        started = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*(pool.run(_Doubled(i)) for i in range(n))), 10)
        took = time.monotonic() - started
        stragglers = len(pool._stragglers)
        await pool.drop_stragglers()
        return results, took, stragglers, pool, frozen

    return asyncio.run(main())


def test_a_frozen_workers_requests_are_answered_by_another_and_it_gets_no_more(monkeypatch):
    """In-process, with a stand-in for Dask's client: one worker never answers.  Each of its
    requests goes to the other worker once overdue, every task gets its own result, the frozen
    worker gets nothing after its first requests, and closing drops what it still holds."""
    from octoray.engine import dask_requests

    monkeypatch.setattr(dask_requests, "FIRST_PATIENCE", 0.2)
    monkeypatch.setattr(dask_requests, "STALL_FLOOR", 0.2)
    sent = []
    results, took, stragglers, pool, frozen = _run_tasks(dask_requests, sent, 12)
    assert results == [2 * i for i in range(12)]
    assert sent.count(frozen) == dask_requests.PER_THREAD  # its first requests, then nothing
    assert stragglers == dask_requests.PER_THREAD and not pool._stragglers
    assert pool.slots[frozen].busy == pool.slots[frozen].overdue == 0  # released once dropped
    assert took < 5


def test_a_run_whose_only_worker_is_frozen_ends_with_an_error_naming_it(monkeypatch):
    """Every worker holds only overdue requests: each is asked whether it is alive, and one
    that says nothing is frozen: the run ends with `no workers left; NAME: not answering`
    (it used to wait for ever, Dask keeping the worker for its 300 s TTL)."""
    import asyncio

    from octoray.engine import dask_requests
    from octoray.engine.faults import ClusterError

    for name, value in (("FIRST_PATIENCE", 0.2), ("STALL_FLOOR", 0.2), ("PROBE", 0.2), ("NO_WORKERS_TIMEOUT", 0.5)):
        monkeypatch.setattr(dask_requests, name, value)
    frozen = "tcp://frozen:1"

    async def main():
        pool = _fake_pool(dask_requests, [], {frozen: 3600}, silent=(frozen,))
        try:
            await asyncio.wait_for(pool.run(_Doubled(1)), 10)
        finally:
            await pool.drop_stragglers()

    with pytest.raises(ClusterError, match=r"has no workers left; tcp://frozen:1: not answering \(nothing in 0.2 s\)"):
        asyncio.run(main())


def test_a_slow_worker_that_is_alive_is_waited_for_when_there_is_no_other(monkeypatch):
    """Its request runs past the patience, but the worker answers Dask's identity call: it is
    busy, not frozen, and the run waits for its answer."""
    import asyncio

    from octoray.engine import dask_requests

    for name, value in (("FIRST_PATIENCE", 0.2), ("STALL_FLOOR", 0.2), ("PROBE", 0.2), ("NO_WORKERS_TIMEOUT", 0.5)):
        monkeypatch.setattr(dask_requests, name, value)
    sent = []

    async def main():
        pool = _fake_pool(dask_requests, sent, {"tcp://slow:1": 1.5})
        return await asyncio.wait_for(pool.run(_Doubled(21)), 10)

    assert asyncio.run(main()) == 42
    assert sent == ["tcp://slow:1"]  # the one request, answered late


def test_requests_sent_before_any_answer_are_overdue_once_the_others_answer_quickly(monkeypatch):
    """A worker frozen before the run starts gets the first requests, sent under the long first
    patience (cards load their overlays).  They waited that whole minute; now the patience is
    looked at again as the other worker answers, and they go to it within seconds."""
    from octoray.engine import dask_requests

    monkeypatch.setattr(dask_requests, "FIRST_PATIENCE", 30.0)
    monkeypatch.setattr(dask_requests, "STALL_FLOOR", 0.2)
    sent = []
    results, took, stragglers, pool, frozen = _run_tasks(dask_requests, sent, 12)
    assert results == [2 * i for i in range(12)]
    assert sent.count(frozen) == dask_requests.PER_THREAD and stragglers == dask_requests.PER_THREAD
    assert took < 5  # not FIRST_PATIENCE


def test_a_worker_opening_its_card_goes_on_answering_and_opens_it_once(monkeypatch):
    """Opening a card loads its overlay (seconds on a real one).  When the card was held at
    start-up, the next requests open it: on a thread, one attempt for all of them, while the
    worker's event loop goes on answering heartbeats and the client's probes."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from octoray.engine import dask_worker
    from octoray.kernels import AcceleratorError

    plugin = dask_worker.AcceleratorPlugin()
    attempts = []

    def open_slowly():
        attempts.append(threading.current_thread())
        time.sleep(0.6)
        if len(attempts) == 1:
            raise AcceleratorError("card 0 is held by another process")
        plugin.lanes = [SimpleNamespace(name="card")]

    monkeypatch.setattr(plugin, "_open_lanes", open_slowly)
    worker = SimpleNamespace(handlers={}, executor=ThreadPoolExecutor(2))

    async def main():
        loop = asyncio.get_running_loop()
        gaps = []

        async def heartbeat():
            for _ in range(30):
                began = loop.time()
                await asyncio.sleep(0.02)
                gaps.append(loop.time() - began)

        beating = asyncio.create_task(heartbeat())
        await plugin.setup(worker)  # the card is held: setup says so and goes on
        replies = await asyncio.gather(*(worker.handlers[dask_worker.RUN_OP]((abs, (-i,))) for i in range(3)))
        await beating
        return replies, gaps

    try:
        replies, gaps = asyncio.run(main())
    finally:
        worker.executor.shutdown()
    assert [r["status"] for r in replies] == ["OK"] * 3
    assert [r["result"].data for r in replies] == [0, 1, 2]
    assert len(attempts) == 2 and threading.main_thread() not in attempts  # setup's, then one for all
    assert max(gaps) < 0.3, max(gaps)
