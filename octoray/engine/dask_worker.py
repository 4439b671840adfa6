"""Dask worker preload: bind the worker to its accelerators, opened once.

    OCTORAY_ACCELERATOR=fpga OCTORAY_DEVICE=0 dask worker tcp://HOST:8786 --nthreads 1 --preload octoray.worker

The plugin opens the worker's lanes in ``setup`` (octoray.kernels.lanes: the cards
``OCTORAY_DEVICE`` names, or without it every card of the host that no other process holds,
or the CPU), installs them for every task, counts the tasks and closes them in ``teardown``.

The rule for cards: each card is driven by one process, which holds a lock on it.  A worker
started with ``OCTORAY_DEVICE=i`` drives card i; one started without it drives every card no
other process holds, one of its threads pinned to each (``--nthreads`` should be the number
of cards; a worker with fewer threads than free cards leaves the rest to other processes).

Importing this module turns off Dask's sampling profiler in the worker (it looks at every
thread 100 times a second, for tasks octoray runs outside Dask's task machinery anyway);
``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=True`` keeps it.
"""

from __future__ import annotations

import os

try:
    from distributed import WorkerPlugin
except ImportError:  # imported only where distributed is installed
    WorkerPlugin = object
else:  # imported as a preload, before the worker sets up its periodic callbacks
    if "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED" not in os.environ:
        import dask

        dask.config.set({"distributed.worker.profile.enabled": False})

PLUGIN_NAME = "octoray-accelerator"
RUN_OP = "octoray_run"  # the client's request: run one task here, reply with its result
STAT_OP = "octoray_stat"  # the client's question: which file do you see at this path?
UNAVAILABLE = "unavailable"  # a reply's status: this worker cannot open its accelerator now


class AcceleratorPlugin(WorkerPlugin):
    name = PLUGIN_NAME
    idempotent = True

    def __init__(self):
        self.lanes: list = []
        self.tasks_done = 0
        self._card_threads = None  # two threads per card, made on the first request
        self._opening = None  # an asyncio.Lock: one attempt to open the cards at a time

    @property
    def accelerator(self):
        return self.lanes[0] if self.lanes else None

    async def setup(self, worker) -> None:
        """Answer requests first, then open the cards: a card held by another process (say a
        worker still shutting down) fails here, and each request tries it again, so the
        worker joins the run once the card is free instead of never."""
        self.worker = worker
        worker.handlers[RUN_OP] = self.run_request
        worker.handlers[STAT_OP] = stat_path
        from octoray.kernels import AcceleratorError

        try:
            await self.lanes_ready()
        except AcceleratorError as error:
            import logging

            logging.getLogger("distributed.worker").warning("octoray: %s; trying again on each task", error)

    def _open_lanes(self) -> None:
        from octoray.kernels import install_local_accelerator
        from octoray.kernels.lanes import close_lanes, open_lanes

        lanes = open_lanes()
        threads = max(1, getattr(getattr(self.worker, "state", None), "nthreads", 0) or len(lanes))
        if len(lanes) > threads:  # a card no thread would drive: leave it to another process
            close_lanes(lanes[threads:])
            lanes = lanes[:threads]
        self.lanes = lanes
        install_local_accelerator(lanes)

    async def run_request(self, payload=None):
        """One task sent straight from the client (no scheduler in between), run on one of
        the worker's threads; the task's own exception comes back as a value, so that the
        client tells it from a lost connection."""
        import asyncio

        from distributed.protocol import to_serialize

        from octoray.kernels import AcceleratorError

        try:
            await self.lanes_ready()
        except AcceleratorError as error:  # the client sends the task elsewhere
            return {"status": UNAVAILABLE, "reason": str(error)}
        fn, args = payload
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._threads(), run_task, fn, args)
        except Exception as error:  # noqa: BLE001 - handed to the client, which raises it
            self.tasks_done += 1
            return {"status": "error", "exception": to_serialize(_picklable(error))}
        self.tasks_done += 1
        return {"status": "OK", "result": to_serialize(result)}

    async def lanes_ready(self) -> None:
        """Open the cards if setup could not, on a thread and one attempt at a time: loading
        an overlay takes seconds on a card, and meanwhile the worker's event loop must go on
        answering heartbeats and the client's probes. Raises AcceleratorError."""
        import asyncio

        if self.lanes:
            return
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if not self.lanes:
                await asyncio.get_running_loop().run_in_executor(None, self._open_lanes)

    def _threads(self):
        """Where requests run: on cards, two threads pinned to each (as the embedded default's
        lanes: while one waits for the card, the other does its task's host work and the
        card never idles between calls); on the CPU, the worker's own threads."""
        if not any(getattr(lane, "device_name", None) for lane in self.lanes):
            return self.worker.executor
        if self._card_threads is None:
            import itertools
            from concurrent.futures import ThreadPoolExecutor

            from octoray.engine.lanes import THREADS_PER_CARD
            from octoray.kernels import pin_thread

            order = itertools.cycle(self.lanes)
            self._card_threads = ThreadPoolExecutor(THREADS_PER_CARD * len(self.lanes),
                                                    thread_name_prefix="octoray-card",
                                                    initializer=lambda: pin_thread(next(order)))
        return self._card_threads

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "memory" and start == "executing":
            self.tasks_done += 1

    def teardown(self, worker) -> None:
        from octoray.kernels import install_local_accelerator
        from octoray.kernels.lanes import close_lanes

        for op in (RUN_OP, STAT_OP):
            worker.handlers.pop(op, None)
        if self._card_threads is not None:
            self._card_threads.shutdown(wait=True)
            self._card_threads = None
        if self.lanes:
            install_local_accelerator(None)
            close_lanes(self.lanes)
            self.lanes = []


def run_task(fn, args):
    """On a worker thread: read the file ranges the task names, count it on its lane, run it."""
    from octoray.engine.file_ranges import resolve
    from octoray.engine.stream import map_values
    from octoray.kernels import local_accelerator
    from octoray.kernels.lanes import record_task

    record_task(local_accelerator())
    args = [map_values(a, resolve) for a in args]
    return DeflatedChunks.wrap(fn(*args))


class DeflatedChunks:
    """A task's deflate results on their way back: their bytes travel out of band, as the
    input did (no copy into the pickle stream here, none out of it in the client)."""

    __slots__ = ("chunks",)

    def __init__(self, chunks: list):
        self.chunks = chunks

    @classmethod
    def wrap(cls, result):
        from octoray.formats.gzip import DeflatedChunk

        if isinstance(result, list) and result and all(type(r) is DeflatedChunk for r in result):
            return cls(result)
        return result

    @staticmethod
    def unwrap(result):
        return result.chunks if isinstance(result, DeflatedChunks) else result

    def __reduce_ex__(self, protocol):
        from octoray.engine.stream import out_of_band

        carry = out_of_band if protocol >= 5 else bytes
        return _deflated_chunks, ([(carry(c.data), c.crc, c.size, c.last) for c in self.chunks],)


def _deflated_chunks(rows: list) -> list:
    from octoray.formats.gzip import DeflatedChunk

    return [DeflatedChunk(*row) for row in rows]


def stat_path(path: bytes | str = b""):
    """{"seen": [size, mtime in ns], "sample": digest} of `path` (its bytes: any name) as this
    worker sees it (octoray.engine.file_ranges.sample_digest), "seen" None where it sees none:
    a reply either way (a worker without this handler gives none)."""
    import os

    from octoray.engine.file_ranges import identity, sample_digest

    try:
        seen = list(identity(os.stat(path)))
    except OSError:
        return {"seen": None}
    return {"seen": seen, "sample": sample_digest(path)}


def _picklable(error: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - an exception that cannot travel: its text can
        return RuntimeError(f"{type(error).__name__}: {error}")


async def dask_setup(worker) -> None:
    """Called by ``dask worker --preload octoray.worker``."""
    await worker.plugin_add(AcceleratorPlugin(), name=PLUGIN_NAME)


async def describe_worker(dask_worker) -> dict:
    """Run on each worker by `octoray status`: its lanes (accelerator, tasks), threads, tasks done."""
    from octoray.kernels import AcceleratorError, local_lanes

    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    try:
        if plugin:
            await plugin.lanes_ready()
        lanes = plugin.lanes if plugin else local_lanes()
    except AcceleratorError as error:
        threads = dask_worker.state.nthreads
        return {"name": str(dask_worker.name), "accelerator": f"unavailable: {error}", "threads": threads,
                "tasks": 0, "preloaded": plugin is not None, "lanes": []}
    threads = dask_worker.state.nthreads
    tasks = plugin.tasks_done if plugin else 0
    rows = [{"accelerator": lane.name, "tasks": getattr(lane, "tasks_done", 0)} for lane in lanes]
    if len(rows) == 1:
        rows[0]["tasks"] = tasks
    return {"name": str(dask_worker.name), "accelerator": lanes[0].name, "threads": threads,
            "tasks": tasks, "preloaded": plugin is not None, "lanes": rows}
