"""The engine's executor on a Dask cluster: connecting, and tasks sent to the workers.

- Each task is one request from the client straight to a worker (octoray's preload answers
  it), its data inside as out-of-band buffers, its result in the reply: no scheduler round
  trips, no scattered keys (octoray.engine.dask_requests).
- The client keeps every task's data until its result is taken: when a worker is lost, the
  task is sent to another one and the output stays byte-exact.
- A regular file that the workers see as this host does is not sent at all: the tasks carry
  byte ranges and the workers read them (octoray.engine.file_ranges).
- Waiting is bounded: with no worker to run on, or the scheduler gone, the run ends with
  ClusterError instead of hanging.  A port that refuses is reported at once, a cluster with
  no workers before anything is written, a lost scheduler within about a second.
"""

from __future__ import annotations

import os

from octoray.engine.faults import ClusterError

CONNECT_TIMEOUT = 10.0
PROBE_TIMEOUT = 2.0  # a plain TCP connect first: a refused port needs no 10 s of Dask retries
STARTUP_WORKERS_TIMEOUT = 3.0  # a cluster with no workers at the start: an error this soon
# Engine jobs per request (4 MiB of fgzip input): a request's own cost is small beside 4 jobs'
# data, and finer tasks keep several cards evenly busy (the stream's last jobs go one by one).
JOBS_PER_TASK = 4
# Where the workers read the file themselves a request carries no data, only its cost: fewer,
# larger ones (the client's CPU per GB is then mostly requests and results), growing with the
# file up to MAX_FILE_JOBS_PER_TASK while every request slot still gets FILE_TASKS_PER_SLOT tasks.
FILE_JOBS_PER_TASK = 8
MAX_FILE_JOBS_PER_TASK = 32
FILE_TASKS_PER_SLOT = 4
# A stream whose data travels through the client (fgzip reading a pipe) starts at
# JOBS_PER_TASK and grows up to this as it proves long (octoray.engine.stream.batched): Dask's
# event loop spends about 2 ms of the client's Python on a request, whatever its size.
MAX_STREAM_JOBS_PER_TASK = 16


def file_jobs_per_task(jobs: int, slots: int) -> int:
    """Jobs per request for a file of `jobs` jobs read by the workers over `slots` request slots."""
    return min(MAX_FILE_JOBS_PER_TASK, max(FILE_JOBS_PER_TASK, jobs // (FILE_TASKS_PER_SLOT * max(1, slots))))


def quiet_dask() -> None:
    """No Dask log lines, warnings or tracebacks on the tools' stderr (see specs/dask.md)."""
    os.environ.setdefault("DASK_DISTRIBUTED__LOGGING__DISTRIBUTED", "error")
    os.environ.setdefault("DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH", "0")
    os.environ.setdefault("DASK_DISTRIBUTED__ADMIN__LARGE_GRAPH_WARNING_THRESHOLD", "1GB")
    # a dead worker's port refuses at once; distributed retries until this runs out
    os.environ.setdefault("DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT", "5s")
    # numpy comes with distributed: its BLAS threads would spin on the client's cores for nothing
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import logging
    import warnings

    import distributed  # noqa: F401 - configures its loggers on import; quiet them after

    noisy = ("distributed", "tornado", "asyncio", "bokeh")
    for name in [*noisy, *logging.root.manager.loggerDict]:
        if name.startswith(noisy):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module="distributed")


def _timeouts() -> tuple:
    """What a wait with a timeout raises (distinct classes before Python 3.11)."""
    import asyncio
    import concurrent.futures

    return TimeoutError, concurrent.futures.TimeoutError, asyncio.TimeoutError


class _Task:
    """One task: its function, its arguments (kept here until its result is taken, to send
    again if its worker is lost) and the future of its request."""

    __slots__ = ("fn", "args", "future")

    def __init__(self, fn, args):
        self.fn, self.args, self.future = fn, args, None

    def cancel(self) -> None:
        if self.future is not None:
            self.future.cancel()


class DaskExecutor:
    """Tasks sent straight to the workers (see octoray.engine.dask_requests), the scheduler
    asked only who the workers are."""

    in_process = False

    def __init__(self, client, address: str, cluster=None, jobs_asked: int | None = None):
        from octoray.engine.dask_requests import WorkerPool

        from octoray.engine.allocator import keep_freed_memory

        keep_freed_memory()  # every request and reply allocates MiB-sized buffers: reuse them
        import gc

        gc.freeze()  # the modules just imported need no more garbage-collector passes
        self.client = client
        self.address = address
        self._cluster = cluster  # a LocalCluster this executor started, closed with it
        self._timeouts = _timeouts()
        self.lost = False  # the scheduler went away: closing need not wait for it
        self.pool = WorkerPool(self)
        self._jobs_asked = jobs_asked  # $OCTORAY_JOBS_PER_TASK, read (and checked) before connecting
        self.jobs_per_task = self._jobs_asked or JOBS_PER_TASK
        self.largest_jobs_per_task = self.jobs_per_task  # no growth but for fgzip's streams
        self.note = None  # how the data reached the workers, for -v
        self.note_subject = None  # the path the note names, absolute

    @property
    def workers(self) -> int:
        """Tasks the cluster holds at once (PER_THREAD per worker thread): the ordered map's
        window grows with it, so that results coming back out of order never leave a card
        without its next task."""
        from octoray.engine.dask_requests import PER_THREAD

        return max(1, PER_THREAD * self.pool.threads())

    def submit(self, fn, *args) -> _Task:
        import asyncio

        task = _Task(fn, args)
        task.future = asyncio.run_coroutine_threadsafe(self.pool.run(task), self.client.loop.asyncio_loop)
        return task

    def result(self, task: _Task):
        from octoray.engine.dask_requests import POLL

        while True:
            self._check_alive()
            try:
                return task.future.result(timeout=POLL)
            except self._timeouts:
                continue

    def file_chunks(self, fd: int, block_size: int):
        """(FileChunk, is_last) pairs when the workers can read the file open on `fd`
        themselves, else None (the caller reads and ships the bytes)."""
        from octoray.engine.file_ranges import file_chunks, file_source

        self.jobs_per_task = self._jobs_asked or JOBS_PER_TASK
        self.largest_jobs_per_task = self.jobs_per_task if self._jobs_asked else MAX_STREAM_JOBS_PER_TASK
        source = file_source(fd)
        if source is None:
            self.note = "the input is not a regular file: its data is sent to the workers"
            return None
        path, start, ident = source
        if not self._workers_read(path, ident, path, "its data"):
            return None
        self.pool.shared_file = (fd, path, ident)
        jobs = -(-(ident[0] - start) // block_size)
        self.jobs_per_task = self._jobs_asked or file_jobs_per_task(jobs, self.workers)
        self.largest_jobs_per_task = self.jobs_per_task  # sized for the whole file already
        return self._consumed(fd, file_chunks(path, start, ident, block_size), ident[0])

    def shared_paths(self, path: str, ident: tuple[int, int]) -> bool:
        """Whether the workers read input files themselves, asked once, with the first file
        (`path`, as this host sees it: `ident`); each later file is checked where it is read
        (octoray.engine.file_ranges), and a worker that sees another file gets the bytes."""
        return self._workers_read(path, ident, "the input files", "the files' data")

    def _workers_read(self, path: str, ident: tuple[int, int], what: str, data: str) -> bool:
        """Ask the workers whether they see `path` as this host does; if any does, tasks carry
        file ranges from now on.  The answer goes to `note`, for -v."""
        seeing = self._sync(self.pool.who_sees(path, ident))
        self.note_subject = path
        if not seeing:
            self.note = f"no worker sees {path} as this host does: {data} is sent to the workers"
            return False
        self.note = f"{len(seeing)} of {len(self.pool.slots)} workers read {what} themselves"
        self.pool.reading = True
        return True

    def _consumed(self, fd: int, chunks, end: int):
        yield from chunks
        os.lseek(fd, end, os.SEEK_SET)  # as if this process had read it (stdin left at its end)

    def _sync(self, coroutine):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.client.loop.asyncio_loop).result()

    def _check_alive(self) -> None:
        """A client leaves "running" only when its connection to the scheduler broke (Dask
        would then try to reconnect for its whole timeout)."""
        if self.lost or self.client.status != "running":
            self.lost = True
            raise ClusterError(f"lost the cluster at {self.address}: the scheduler went away")

    def wait_for_workers(self, timeout: float) -> None:
        self._sync(self.pool.wait_for_workers(timeout))

    def describe(self) -> list[dict]:
        """A row per lane of every worker; a worker that does not answer within
        STATUS_TIMEOUT (stopped, swapping) gets a row that says so, not a wait without end."""
        from octoray.engine.dask_worker import describe_worker

        answering = self._sync(self.pool.answering(STATUS_TIMEOUT))
        rows = [{"worker": slot.name, "accelerator": f"not answering (nothing in {STATUS_TIMEOUT:g} s)",
                 "threads": slot.threads, "tasks": 0} for slot in self.pool.slots.values()
                if slot.address not in answering]
        replies = self.client.run(describe_worker, workers=sorted(answering)) if answering else {}
        for address, info in replies.items():
            lanes = info.get("lanes") or [{"accelerator": info["accelerator"], "tasks": info.get("tasks", 0)}]
            threads = info.get("threads", 1)
            for i, lane in enumerate(lanes):  # a worker that drives several cards: a row each
                share = threads // len(lanes) + (1 if i < threads % len(lanes) else 0)
                rows.append(dict(info, worker=info.get("name") or address, accelerator=lane["accelerator"],
                                 threads=share, tasks=lane["tasks"]))
        return sorted(rows, key=lambda row: (row["worker"], row["accelerator"]))

    def close(self) -> None:
        """Close quietly: a client of a dead scheduler can print tracebacks as it shuts down."""
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            self._drop_stragglers()
            self.client.close(timeout=0.5 if self.lost else 5)
            if self._cluster is not None:
                self._cluster.close(timeout=5)
        except Exception:  # closing a dead connection must not hide the run's own outcome
            pass
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)

    def _drop_stragglers(self) -> None:
        """Cancel the overdue requests another worker answered for, before the loop stops."""
        if self.lost or getattr(self, "pool", None) is None:
            return
        import asyncio

        try:
            asyncio.run_coroutine_threadsafe(self.pool.drop_stragglers(), self.client.loop.asyncio_loop).result(5)
        except Exception:  # a loop already gone has nothing left to cancel
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


JOBS_ENV = "OCTORAY_JOBS_PER_TASK"
STATUS_TIMEOUT = 5.0  # seconds a worker has to answer `octoray status`


def jobs_per_task_asked() -> int | None:
    """$OCTORAY_JOBS_PER_TASK: engine jobs a Dask task carries, fixed (None: octoray's choice)."""
    value = os.environ.get(JOBS_ENV, "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise ClusterError(f"{JOBS_ENV}={value!r} is not a number of jobs (1 or more)")
    return int(value)


def connect(address: str | None = None, scheduler_file: str | None = None,
            timeout: float = CONNECT_TIMEOUT, security=None,
            workers_timeout: float = STARTUP_WORKERS_TIMEOUT) -> DaskExecutor:
    """Connect to a running scheduler that has (within `workers_timeout`) a worker;
    ClusterError if it cannot be reached (at once where the port refuses, else within
    `timeout`) or has no workers.  Nothing is sent to the cluster before that."""
    where = address or scheduler_file
    jobs_asked = jobs_per_task_asked()  # a bad value is said before any connection is made
    if scheduler_file and not os.path.exists(scheduler_file):  # Client would wait forever
        raise ClusterError(f"cannot reach the cluster at {where}: no such scheduler file")
    target = address or _address_in(scheduler_file)
    probe_scheduler(target, where)  # before importing distributed (0.4 s)
    quiet_dask()
    from distributed import Client

    _check_tls(target, where, security)
    # The tools die quietly of SIGPIPE on a closed stdout (`fgzip -dc | head`), but a socket
    # whose peer died must be an error, not that death: the client's event-loop thread, which
    # does every socket write, starts with SIGPIPE blocked (a write then fails with EPIPE).
    import signal

    saved = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
    try:
        if scheduler_file:
            client = Client(scheduler_file=scheduler_file, timeout=timeout, security=security,
                            set_as_default=False)
        else:
            client = Client(address, timeout=timeout, security=security, set_as_default=False, direct_to_workers=True)
    except (OSError, TimeoutError, ValueError, TypeError) as error:
        raise ClusterError(f"cannot reach the cluster at {where}: {error}") from None
    except Exception as error:  # noqa: BLE001 - bytes Dask cannot read (MemoryError on a "frame" of exabytes)
        raise ClusterError(f"cannot reach the cluster at {where}: not a Dask scheduler "
                           f"(what it sent is not Dask's protocol: {type(error).__name__})") from None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)
    executor = DaskExecutor(client, client.scheduler.address, jobs_asked=jobs_asked)
    try:
        executor.wait_for_workers(workers_timeout)
    except ClusterError:
        executor.close()
        raise
    return executor


def probe_scheduler(address: str, where: str, timeout: float = PROBE_TIMEOUT,
                    answer_timeout: float = CONNECT_TIMEOUT) -> None:
    """A plain TCP connect to a tcp:// or tls:// scheduler: a refused port or an unknown host
    is a ClusterError at once; a port that does not answer is left to Dask's timeout.  On
    tcp://, a Dask scheduler speaks first (its handshake, at once): a service that accepts the
    connection and stays silent within `answer_timeout` (the dashboard's HTTP port, say, on
    which Dask's client would wait for ever) is a ClusterError too."""
    import socket

    scheme, _, rest = address.rpartition("://")
    if scheme == "inproc":
        raise ClusterError(f"cannot reach the cluster at {where}: inproc:// names a scheduler inside one "
                           f"process; give the tcp://HOST:PORT (or tls://) its workers connect to")
    if scheme not in ("", "tcp", "tls"):
        return
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return
    if not 0 < int(port) < 65536:
        raise ClusterError(f"cannot reach the cluster at {where}: {port} is not a port number (1-65535)")
    try:
        connection = socket.create_connection((host, int(port)), timeout=timeout)
    except ConnectionRefusedError:
        raise ClusterError(f"cannot reach the cluster at {where}: connection refused "
                           f"(no scheduler listens on {host} port {port})") from None
    except socket.gaierror:
        raise ClusterError(f"cannot reach the cluster at {where}: unknown host {host!r}") from None
    except OSError:  # slow, filtered or unreachable: Dask's own timeout and message
        return
    with connection:
        if scheme == "tls":  # the client speaks first there (TLS's hello)
            return
        connection.settimeout(answer_timeout)
        try:
            spoke = connection.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            spoke = None
        except OSError:  # reset: let Dask say what it makes of it
            return
    if spoke is None:  # a scheduler speaks first: silence is another service, or a scheduler that hangs
        raise ClusterError(f"cannot reach the cluster at {where}: no Dask scheduler answers ({host} port {port} "
                           f"accepts connections but sends nothing in {answer_timeout:g} s: the dashboard's "
                           f"port or another service, or a scheduler that is stopped or stuck?)")
    if not spoke:
        raise ClusterError(f"cannot reach the cluster at {where}: not a Dask scheduler ({host} port {port} "
                           f"accepts connections but closes them; another service?)")


def _address_in(scheduler_file: str) -> str:
    import json

    try:
        with open(scheduler_file, encoding="utf-8") as f:
            address = json.load(f).get("address")
    except (OSError, ValueError, AttributeError) as error:
        raise ClusterError(f"cannot reach the cluster at {scheduler_file}: not a scheduler file ({error})") from None
    if not isinstance(address, str) or not address:
        raise ClusterError(f"cannot reach the cluster at {scheduler_file}: not a scheduler file (no address in it)")
    return address


def _check_tls(address: str, where: str, security) -> None:
    """A tls:// scheduler needs our certificate; without one Dask fails slowly and obscurely."""
    if not address.startswith("tls://"):
        return
    from distributed.security import Security

    security = security or Security()
    if not (security.tls_ca_file and security.tls_client_cert):
        raise ClusterError(
            f"cannot reach the cluster at {where}: a tls:// scheduler needs a certificate: set "
            "distributed.comm.tls.ca-file, .client.cert and .client.key in the Dask configuration "
            "(or DASK_DISTRIBUTED__COMM__TLS__CA_FILE, ...__CLIENT__CERT, ...__CLIENT__KEY)")


def start_local_cluster(threads: int | None = None) -> DaskExecutor:
    """An in-process Dask LocalCluster: Dask's machinery without a scheduler to run."""
    jobs_asked = jobs_per_task_asked()
    quiet_dask()
    from distributed import Client, LocalCluster

    from octoray.engine.dask_worker import AcceleratorPlugin

    cluster = LocalCluster(processes=False, n_workers=1, threads_per_worker=threads or os.cpu_count() or 1,
                           dashboard_address=None, silence_logs=False)
    client = Client(cluster, set_as_default=False)
    client.register_plugin(AcceleratorPlugin())
    return DaskExecutor(client, cluster.scheduler_address, cluster, jobs_asked)
