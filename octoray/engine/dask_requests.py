"""Tasks sent straight from the client to the workers of a Dask cluster, one request each.

A Dask task costs several round trips through the scheduler (scatter: three; submit; the
result: two more) and the scheduler's CPU: a ceiling on how fast one client can feed the
cards (README, Cluster: the client's CPU per GB).  Here the client sends each task to
a worker as one request that octoray's preload answers (``octoray_run``), data and function
inside, the result in the reply, over Dask's own connections (TLS included).  The client
places the tasks itself: each worker gets at most two per thread (one running, one waiting,
so its card never idles), the least loaded first.  The scheduler is asked only who the
workers are, at most once a second.

A worker lost mid-request (its connection breaks) is left out for a few seconds and the task
goes to another one; after RESUBMISSIONS such losses the run fails.  A worker the scheduler no
longer lists (it saw the process die) is dropped, and its requests go elsewhere at once: one
still connecting to its port would wait out Dask's connect retries.  A worker whose card
cannot be opened yet (held by another process) answers so, and is left out for as long.  A
worker that sees the input file differently from this host gets that task's bytes instead of
its ranges.  A request that runs far longer than the others did goes to a second worker too
(a frozen worker's connection stays open): the first answer wins.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque

from octoray.engine.faults import ClusterError

NO_WORKERS_TIMEOUT = 30.0  # every worker lost mid-run: time for restarted ones to join
POLL = 1.0  # how often a waiting client looks at its connection to the scheduler
RESUBMISSIONS = 4

PER_THREAD = 2  # requests in flight per worker thread
LEFT_OUT = 5.0  # seconds a worker whose connection broke is not sent anything
FIRST_PATIENCE = 60.0  # seconds a request may take before a few have answered
STALL_FLOOR = 10.0  # the least time a request may take before another worker is asked too
STALL_FACTOR = 8  # ... or this many times the slowest of the last requests
COPIES = 2  # a task is in flight on at most this many workers at once
PLUGIN_WAIT = 10.0  # seconds to wait for the workers to acknowledge octoray's plugin
PROBE = 5.0  # seconds a worker holding only overdue requests has to show it is alive


class _Slot:
    """What the client knows of one worker."""

    __slots__ = ("address", "name", "threads", "busy", "overdue", "left_out_until", "sees_file", "unavailable",
                 "requests")

    def __init__(self, address: str):
        self.address, self.name = address, address
        self.threads, self.busy, self.left_out_until = 1, 0, 0.0
        self.overdue = 0  # its requests that ran past their patience: none more until they answer
        self.sees_file: bool | None = None  # None: not asked
        self.unavailable: str | None = None  # why it was last left out: its card, or no answer
        self.requests: set = set()  # the futures of its requests in flight


class _Request:
    """One request in flight: where it went, when, and how its file ranges travelled."""

    __slots__ = ("slot", "sent", "overdue", "as_ranges", "future")

    def __init__(self, slot: _Slot, sent: float, as_ranges: bool):
        self.slot, self.sent, self.as_ranges = slot, sent, as_ranges
        self.overdue = False
        self.future: asyncio.Future | None = None

    def overdue_at(self, patience: float) -> float:
        """When it becomes overdue under today's patience (never again once it is)."""
        return float("inf") if self.overdue else self.sent + patience

    def mark_overdue(self) -> None:
        if not self.overdue:
            self.overdue = True
            self.slot.overdue += 1

    def finished(self) -> None:
        if self.overdue:  # it answered (or was given up): the worker is no longer suspect for it
            self.overdue = False
            self.slot.overdue -= 1


class _Outcome:
    """A task's result once a worker gave it, and the workers lost on the way."""

    __slots__ = ("done", "result", "losses")

    def __init__(self):
        self.done, self.result, self.losses = False, None, 0


class WorkerPool:
    def __init__(self, executor):
        self.executor = executor
        self.client = executor.client
        self.slots: dict[str, _Slot] = {}
        self.shared_file = None  # (fd, path, identity) while the workers read the input themselves
        self.reading = False  # tasks may carry file ranges (fgzip's input, fclassify's images)
        self._asked = 0.0
        self._queue: deque = deque()  # futures of the requests waiting for a worker, oldest first
        self._plugin_install: asyncio.Future | None = None  # done: when the plugin was in place
        self._durations: deque = deque(maxlen=32)  # seconds the last requests took
        self._stragglers: set = set()  # overdue requests whose task another worker answered
        self._probe: asyncio.Future | None = None  # the last look at workers that hold only overdue requests
        self._probed = 0.0
        self._update(self.client.scheduler_info()["workers"])

    def threads(self) -> int:
        return sum(slot.threads for slot in self.slots.values())

    def _update(self, workers: dict) -> None:
        for address, info in workers.items():
            slot = self.slots.get(address)
            if slot is None:
                slot = self.slots[address] = _Slot(address)
            slot.threads = max(1, int(info.get("nthreads", 1) or 1))
            slot.name = str(info.get("name", address))
        for address in [a for a in self.slots if a not in workers]:
            for future in list(self.slots.pop(address).requests):  # _judge counts each as a loss
                future.cancel()

    async def refresh(self, force: bool = False) -> None:
        """Ask the scheduler who the workers are (at most once a second unless forced)."""
        now = time.monotonic()
        if not force and now - self._asked < 1.0:
            return
        self._asked = now
        try:
            info = await asyncio.wait_for(self.client.scheduler.identity(), POLL)
        except (asyncio.TimeoutError, TimeoutError):
            return
        except OSError as error:
            self.executor.lost = True
            raise ClusterError(f"lost the cluster at {self.executor.address}: {error}") from None
        self._update(info.get("workers", {}))
        self._hand_out()

    async def wait_for_workers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.executor._check_alive()
            await self.refresh(force=True)
            if self.slots:
                return
            if time.monotonic() >= deadline:
                address = self.executor.address
                raise ClusterError(f"the cluster at {address} has no workers (start them with "
                                   f"`dask worker {address} --preload octoray.worker`)")
            await asyncio.sleep(0.2)

    def _free(self) -> _Slot | None:
        now, best = time.monotonic(), None
        for slot in self.slots.values():
            if slot.left_out_until > now or slot.overdue or slot.busy >= PER_THREAD * slot.threads:
                continue
            if best is None or slot.busy * best.threads < best.busy * slot.threads:
                best = slot
        return best

    def _hand_out(self) -> None:
        """Give free workers to the requests waiting, oldest first.  Only those woken: a
        freed slot used to wake every waiting request to look, which cost the client about
        a millisecond of CPU per task (README, Cluster: the client's CPU per GB)."""
        while self._queue:
            slot = self._free()
            if slot is None:
                return
            waiter = self._queue.popleft()
            if not waiter.done():  # a request cancelled while it waited has no use for one
                slot.busy += 1
                waiter.set_result(slot)

    async def _take(self) -> _Slot:
        """The least loaded worker with room for a request, for the requests in the order they
        came (the ordered writer waits for the oldest first, and a stream's last, small tasks
        must not overtake the larger ones); waits while all are busy, and fails when no
        worker at all is left for NO_WORKERS_TIMEOUT."""
        alone_since = None
        waiter = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        self._hand_out()
        try:
            while True:
                self.executor._check_alive()
                if not waiter.done():
                    try:  # a slot freed, or a look at the cluster every 0.2 s
                        await asyncio.wait_for(asyncio.shield(waiter), 0.2)
                    except (asyncio.TimeoutError, TimeoutError):
                        pass
                if waiter.done():
                    return waiter.result()
                await self.refresh()  # workers lost (the scheduler saw them go) or joined meanwhile
                now = time.monotonic()
                present = [s for s in self.slots.values() if s.left_out_until <= now]
                if present:
                    alone_since = None  # workers are there, only busy
                    if all(s.overdue for s in present):  # or frozen, all of them
                        await self._check_stragglers()
                else:
                    alone_since = alone_since or now
                    if now - alone_since > NO_WORKERS_TIMEOUT:
                        raise self._no_workers_left()
                self._hand_out()  # a worker left out may be back
        except BaseException:
            if waiter.done() and not waiter.cancelled():  # handed a slot, then cancelled or failed
                waiter.result().busy -= 1
                self._hand_out()
            waiter.cancel()
            raise

    async def _check_stragglers(self) -> None:
        """Every worker left holds requests past their patience, and none has another worker
        to go to: each must answer Dask's identity call within PROBE seconds (a busy
        worker's event loop does), or it is frozen and gets nothing more in this run (Dask
        would keep it for its 300 s TTL, and the run would wait on it for ever).  One look
        at a time, at most one every PROBE seconds."""
        if self._probe is None or (self._probe.done() and time.monotonic() - self._probed >= PROBE):
            self._probed = time.monotonic()

            async def probe() -> None:
                alive = await self.answering(PROBE)
                for slot in self.slots.values():
                    if slot.overdue and slot.address not in alive:
                        slot.left_out_until, slot.unavailable = float("inf"), f"not answering (nothing in {PROBE:g} s)"

            self._probe = asyncio.ensure_future(probe())
        await asyncio.shield(self._probe)

    def _no_workers_left(self) -> ClusterError:
        why = "".join(f"; {slot.name}: {slot.unavailable}" for slot in self.slots.values() if slot.unavailable)
        return ClusterError(f"the cluster at {self.executor.address} has no workers left{why}")

    async def run(self, task):
        """Send `task` to a worker and return its result; see the module docstring.  A request
        that runs much longer than the others did (``patience``) is sent to a second worker
        as well, and the first answer wins: a frozen worker (stopped, swapping, a hung card)
        keeps its TCP connection open, and Dask would wait minutes before giving it up."""
        outcome = _Outcome()
        requests: list[_Request] = []
        taking: asyncio.Future | None = asyncio.ensure_future(self._take())
        try:
            while True:
                waits = [r.future for r in requests] + ([taking] if taking is not None else [])
                # the patience shrinks as other requests answer (FIRST_PATIENCE until a few have): looked
                # at again each second, so a worker frozen from the start costs seconds too
                patience = self.patience()
                overdue_at = min([r.overdue_at(patience) for r in requests] + [float("inf")]) \
                    if taking is None else float("inf")
                timeout = None if overdue_at == float("inf") else min(POLL, max(0.0, overdue_at - time.monotonic()))
                done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if taking is not None and taking.done():
                    slot, taking = taking.result(), None
                    requests.append(self._send(slot, task))
                    continue
                if not done:  # a request is overdue: its worker gets nothing more, and one more is asked
                    await self.refresh()  # or its worker left the cluster: its requests are cancelled
                    late = [r for r in requests if r.overdue_at(self.patience()) <= time.monotonic() + 0.01]
                    if not late:
                        continue
                    for request in late:
                        request.mark_overdue()
                    if len(requests) < COPIES:
                        taking = asyncio.ensure_future(self._take())
                    continue
                for request in [r for r in requests if r.future.done()]:
                    requests.remove(request)
                    await self._judge(request, task, outcome)
                    if outcome.done:
                        return outcome.result
                if not requests and taking is None:
                    taking = asyncio.ensure_future(self._take())
        finally:
            for request in requests:
                if request.overdue:  # left to answer: until it does, its worker gets nothing more
                    self._stragglers.add(request.future)
                    request.future.add_done_callback(self._stragglers.discard)
                else:
                    request.future.cancel()
            if taking is not None:
                taking.cancel()
                if taking.done() and not taking.cancelled() and taking.exception() is None:
                    taking.result().busy -= 1  # handed a slot it will not use
                    self._hand_out()

    async def drop_stragglers(self) -> None:
        """Give up the overdue requests still in flight (the run is over)."""
        for future in list(self._stragglers):
            future.cancel()
        await asyncio.gather(*self._stragglers, return_exceptions=True)

    def _send(self, slot: _Slot, task) -> _Request:
        from distributed.protocol import to_serialize

        as_ranges = self.reading and bool(slot.sees_file)  # decided per request: replies come back later
        payload = (task.fn, self._arguments_for(as_ranges, task.args))

        sent = time.monotonic()
        request = _Request(slot, sent, as_ranges)

        async def call():
            try:
                return await self.client.rpc(slot.address).octoray_run(payload=to_serialize(payload))
            except (OSError, asyncio.TimeoutError):
                # left out before its place is handed on: the next request would go the same way
                # (to a killed worker's port, after Dask's connect retries: the client's timeout)
                slot.left_out_until = time.monotonic() + LEFT_OUT
                raise
            finally:
                slot.busy -= 1
                request.finished()
                self._hand_out()

        request.future = asyncio.ensure_future(call())
        slot.requests.add(request.future)
        request.future.add_done_callback(slot.requests.discard)
        return request

    def patience(self) -> float:
        """How long a request may run before it is sent to another worker too: many times the
        slowest of the last requests (a stream's tasks grow as they prove long), never under
        STALL_FLOOR, and FIRST_PATIENCE until a few have answered (cards load their overlays)."""
        if len(self._durations) < 4:
            return FIRST_PATIENCE
        return max(STALL_FLOOR, STALL_FACTOR * max(self._durations))

    async def _judge(self, request: _Request, task, outcome: _Outcome) -> None:
        """Take a finished request's reply: `outcome` done with the result, or nothing (another
        worker is needed), or raise what ends the run."""
        from octoray.engine.file_ranges import FileChanged
        from octoray.engine.dask_worker import UNAVAILABLE

        slot = request.slot
        error = _lost(request.future)
        if error is not None:
            slot.left_out_until = time.monotonic() + LEFT_OUT
            slot.unavailable = f"no answer ({error or type(error).__name__})"
            outcome.losses += 1
            if outcome.losses > RESUBMISSIONS:
                raise ClusterError(f"a task failed on {outcome.losses} workers: {error}") from None
            return
        reply = request.future.result()
        if reply is None:  # the worker runs without octoray's preload
            await self._install_plugin(slot, request.sent)
            return
        if reply.get("status") == UNAVAILABLE:  # its card cannot be opened now: try another
            slot.left_out_until, slot.unavailable = time.monotonic() + LEFT_OUT, reply.get("reason")
            return
        slot.unavailable = None
        if reply.get("status") == "OK":
            from octoray.engine.dask_worker import DeflatedChunks

            self._durations.append(time.monotonic() - request.sent)
            outcome.done, outcome.result = True, DeflatedChunks.unwrap(reply["result"])
            return
        error = reply["exception"]
        if isinstance(error, FileChanged) and request.as_ranges:
            self._check_files(task.args)  # raises if a file changed here too
            slot.sees_file = False  # that worker sees other files (or none now): send it the bytes
            return
        raise error

    def _arguments_for(self, as_ranges: bool, args: tuple) -> tuple:
        """The task's arguments: file ranges stay ranges where the worker reads the file
        itself (`as_ranges`), else they become bytes read here."""
        if as_ranges or not self.reading:
            return args
        from octoray.engine.file_ranges import FileChunk
        from octoray.engine.stream import map_values

        fd, path = self.shared_file[:2] if self.shared_file else (None, None)

        def here(value):
            if isinstance(value, FileChunk):
                return value.read(fd if value.path == path else None)
            return value

        return tuple(map_values(a, here) for a in args)

    def _check_files(self, args: tuple) -> None:
        """FileChanged if a file a task names changed on this host (not only on a worker)."""
        import os

        from octoray.engine.file_ranges import FileChunk, changed, check_unchanged, identity
        from octoray.engine.stream import map_values

        if self.shared_file is not None:
            fd, path, ident = self.shared_file
            if identity(os.fstat(fd)) != ident:
                raise changed(path)

        def check(value):
            if isinstance(value, FileChunk) and (self.shared_file is None or value.path != self.shared_file[1]):
                check_unchanged(value)

        for arg in args:
            map_values(arg, check)

    async def who_sees(self, path: str, ident: tuple[int, int]) -> list[str]:
        """The workers that see `path` with the identity and sample digest this host sees."""
        from octoray.engine.file_ranges import sample_digest

        sample = sample_digest(path)

        async def ask(slot: _Slot) -> None:
            reply = None
            for attempt in range(2):  # a worker without octoray's preload: its plugin, then once more
                sent = time.monotonic()
                try:
                    # as bytes: Dask's msgpack refuses a name that is not UTF-8 (os.fsdecode's escapes)
                    asked = self.client.rpc(slot.address).octoray_stat(path=os.fsencode(path))
                    reply = await asyncio.wait_for(asked, 5)
                except (OSError, asyncio.TimeoutError):
                    break  # lost or frozen, not missing the plugin (Dask answers None for that)
                if isinstance(reply, dict) or attempt:
                    break
                await self._install_plugin(slot, sent)
            seen = reply.get("seen") if isinstance(reply, dict) else None
            slot.sees_file = seen is not None and tuple(seen) == tuple(ident) and \
                sample is not None and reply.get("sample") == sample

        await asyncio.gather(*(ask(slot) for slot in list(self.slots.values())))
        return [slot.address for slot in self.slots.values() if slot.sees_file]

    async def answering(self, timeout: float) -> set[str]:
        """The workers that answer Dask's identity call within `timeout` seconds."""
        await self.refresh(force=True)

        async def ping(slot: _Slot) -> str | None:
            try:
                await asyncio.wait_for(self.client.rpc(slot.address).identity(), timeout)
            except (OSError, asyncio.TimeoutError):
                return None
            return slot.address

        return {address for address in await asyncio.gather(*(ping(s) for s in list(self.slots.values())))
                if address}

    async def _install_plugin(self, slot: _Slot, sent: float) -> None:
        """Register octoray's worker plugin with the cluster (once): workers started without
        ``--preload octoray.worker`` then answer the requests too.  Every request refused
        before the plugin was in place waits for it and tries again.

        The scheduler keeps the plugin for every worker, present and future, before it hands
        it to each; a frozen worker never acknowledges it, so the wait is bounded (the live
        workers have it by then, and the frozen one is worked around like any straggler)."""
        if self._plugin_install is None:
            from distributed.protocol.pickle import dumps

            from octoray.engine.dask_worker import AcceleratorPlugin, PLUGIN_NAME

            async def install() -> float:
                # the sync Client.register_plugin would block this loop (the client's own)
                registering = asyncio.ensure_future(self.client.scheduler.register_worker_plugin(
                    plugin=dumps(AcceleratorPlugin()), name=PLUGIN_NAME, idempotent=True))
                registering.add_done_callback(_consume)
                # its outcome is not needed: the scheduler holds the plugin before it asks the
                # workers (one lost on the way fails the call), and refresh() finds a lost scheduler
                await asyncio.wait({registering}, timeout=PLUGIN_WAIT)
                return time.monotonic()

            self._plugin_install = asyncio.ensure_future(install())
        installed = await asyncio.shield(self._plugin_install)
        if sent > installed:  # asked after the plugin was in place: not an octoray worker
            slot.left_out_until = float("inf")


def _lost(future: asyncio.Future) -> BaseException | None:
    """Why a finished request has no reply from its worker (its connection broke or timed out,
    or the worker left the cluster and _update cancelled it), or None if it has one."""
    if future.cancelled():
        return ConnectionError("the worker left the cluster")
    error = future.exception()
    return error if isinstance(error, (OSError, asyncio.TimeoutError)) else None


def _consume(future: asyncio.Future) -> None:
    """Retrieve a background call's outcome, so that asyncio logs no 'never retrieved' error:
    a worker that fails the plugin's setup, or is lost meanwhile, is left out like any other."""
    if not future.cancelled():
        future.exception()
