"""The engine's executor on a Dask cluster: chunks scattered to workers, kept here until done.

- Each chunk travels with ``scatter(hash=False)`` (not as a task argument, which would pass
  through the scheduler and be hashed: identical chunks would collapse into one key).
- The client keeps every chunk until its result is taken, because scattered data dies with
  its worker: when a worker is lost the chunk is scattered again and resubmitted.
- Waiting is bounded: with no worker to run on, or the scheduler gone, the run ends with
  ClusterError instead of hanging.  A port that refuses is reported at once, a cluster with
  no workers before anything is written, a lost scheduler within about a second.
"""

from __future__ import annotations

import os
import time

CONNECT_TIMEOUT = 10.0
PROBE_TIMEOUT = 2.0  # a plain TCP connect first: a refused port needs no 10 s of Dask retries
STARTUP_WORKERS_TIMEOUT = 3.0  # a cluster with no workers at the start: an error this soon
NO_WORKERS_TIMEOUT = 30.0  # every worker lost mid-run: time for restarted ones to join
POLL = 1.0  # how often a waiting client looks at its connection to the scheduler
RESUBMISSIONS = 4
# Engine jobs per Dask task (8 MiB of fgzip input, 2,048 images): a task costs ~20 ms of CPU
# across client, scheduler and worker (measured), small beside 8 jobs' work.
JOBS_PER_TASK = 8


class ClusterError(RuntimeError):
    """The cluster could not be reached, or was lost, or has no workers to run on."""


def quiet_dask() -> None:
    """No Dask log lines, warnings or tracebacks on the tools' stderr (see specs/dask.md)."""
    os.environ.setdefault("DASK_DISTRIBUTED__LOGGING__DISTRIBUTED", "error")
    os.environ.setdefault("DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH", "0")
    os.environ.setdefault("DASK_DISTRIBUTED__ADMIN__LARGE_GRAPH_WARNING_THRESHOLD", "1GB")
    # a dead worker's port refuses at once; distributed retries until this runs out
    os.environ.setdefault("DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT", "5s")
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
    """One task: `sending` (a future of the sender pool) gives its Dask future once its data
    is scattered and it is submitted; the arguments stay here until its result is taken."""

    __slots__ = ("sending", "args", "fn", "resubmitted")

    def __init__(self, sending, fn, args):
        self.sending, self.fn, self.args = sending, fn, args
        self.resubmitted = 0

    def cancel(self) -> None:
        if self.sending.cancel():
            return
        try:
            if self.sending.done():
                self.sending.result().cancel()
        except Exception:  # the client is already closed, or the send failed: nothing to cancel
            pass


class DaskExecutor:
    in_process = False

    def __init__(self, client, address: str, cluster=None):
        from concurrent.futures import ThreadPoolExecutor

        self.client = client
        self.address = address
        self._cluster = cluster  # a LocalCluster this executor started, closed with it
        self._timeouts = _timeouts()
        self.lost = False  # the scheduler went away: closing need not wait for it
        self._workers_seen = 0.0
        self.workers = max(1, sum(w.get("nthreads", 1) for w in (self._ask_workers() or {}).values()))
        self.jobs_per_task = max(1, int(os.environ.get("OCTORAY_JOBS_PER_TASK") or JOBS_PER_TASK))
        # Scatter and submit are round trips (10-20 ms a chunk): two sender threads overlap
        # them with reading the next chunk and with the workers' compute.
        self._senders = ThreadPoolExecutor(2, thread_name_prefix="octoray-send")

    def _send(self, fn, args):
        """Scatter the chunk and submit its task; a worker that died under the scatter is
        noticed by the scheduler within moments, so try again on the others."""
        data = bytes(args[0]) if isinstance(args[0], memoryview) else args[0]
        for attempt in range(RESUBMISSIONS + 1):
            self._wait_for_workers()
            try:
                scattered = self.client.scatter(data, hash=False)
                return self.client.submit(fn, scattered, *args[1:], pure=False)
            except (OSError, *self._timeouts) as error:
                failure = error
                self._workers_seen = 0.0
                self._check_alive()
                time.sleep(0.5)
        raise ClusterError(f"lost the cluster at {self.address}: {failure}")

    def submit(self, fn, *args) -> _Task:
        return _Task(self._senders.submit(self._send, fn, args), fn, args)

    def _sent(self, task: _Task):
        """The task's Dask future once its send is done, looking at the cluster while waiting."""
        while True:
            try:
                return task.sending.result(timeout=POLL)  # a send's ClusterError surfaces here
            except self._timeouts:
                self._check_alive()

    def result(self, task: _Task):
        while True:
            try:
                return self._sent(task).result(timeout=POLL)
            except self._timeouts:
                self._check_alive()
                continue
            except Exception as error:
                if not self._worker_lost(error):
                    raise
                self._check_alive()
                if task.resubmitted >= RESUBMISSIONS:
                    raise ClusterError(f"chunk failed on {RESUBMISSIONS + 1} workers: {error}") from None
            self._workers_seen = 0.0
            task.resubmitted += 1
            task.sending = self._senders.submit(self._send, task.fn, task.args)

    @staticmethod
    def _worker_lost(error: BaseException) -> bool:
        from concurrent.futures import CancelledError

        from distributed.scheduler import KilledWorker

        return isinstance(error, (CancelledError, KilledWorker)) or type(error).__name__ in (
            "FutureCancelledError", "CommClosedError")

    def _check_alive(self) -> None:
        """A client leaves "running" only when its connection to the scheduler broke; its
        futures are cancelled then, so there is nothing to wait for (Dask would try to
        reconnect for its whole timeout)."""
        if self.lost or self.client.status != "running":
            self.lost = True
            raise ClusterError(f"lost the cluster at {self.address}: the scheduler went away")

    def _ask_workers(self) -> dict | None:
        """The scheduler's workers, or None when it did not answer within POLL: an RPC to a
        dead scheduler retries for Dask's whole connect timeout, so no wait is unbounded."""
        self._check_alive()
        try:
            return self.client.sync(self.client.scheduler.identity, callback_timeout=POLL)["workers"]
        except self._timeouts:
            self._check_alive()
            return None
        except OSError as error:
            self.lost = True
            raise ClusterError(f"lost the cluster at {self.address}: {error}") from None

    def _wait_for_workers(self, timeout: float = NO_WORKERS_TIMEOUT) -> None:
        if time.monotonic() - self._workers_seen < 1.0:  # asked the scheduler a moment ago
            return
        deadline = time.monotonic() + timeout
        while True:
            if self._ask_workers():
                self._workers_seen = time.monotonic()
                return
            if time.monotonic() >= deadline:
                raise ClusterError(f"the cluster at {self.address} has no workers (start them with "
                                   f"`dask worker {self.address} --preload octoray.worker`)")
            time.sleep(0.2)

    def describe(self) -> list[dict]:
        from octoray.worker import describe_worker

        rows = self.client.run(describe_worker)
        return sorted((dict(row, worker=row.get("name") or address) for address, row in rows.items()),
                      key=lambda row: row["worker"])

    def close(self) -> None:
        """Close quietly: a client of a dead scheduler can print tracebacks as it shuts down."""
        self._senders.shutdown(wait=False, cancel_futures=True)
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            self.client.close(timeout=0.5 if self.lost else 5)
            if self._cluster is not None:
                self._cluster.close(timeout=5)
        except Exception:  # closing a dead connection must not hide the run's own outcome
            pass
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(address: str | None = None, scheduler_file: str | None = None,
            timeout: float = CONNECT_TIMEOUT, security=None,
            workers_timeout: float = STARTUP_WORKERS_TIMEOUT) -> DaskExecutor:
    """Connect to a running scheduler that has (within `workers_timeout`) a worker;
    ClusterError if it cannot be reached (at once where the port refuses, else within
    `timeout`) or has no workers.  Nothing is sent to the cluster before that."""
    where = address or scheduler_file
    if scheduler_file and not os.path.exists(scheduler_file):  # Client would wait forever
        raise ClusterError(f"cannot reach the cluster at {where}: no such scheduler file")
    target = address or _address_in(scheduler_file)
    probe_scheduler(target, where)  # before importing distributed (0.4 s)
    quiet_dask()
    from distributed import Client

    _check_tls(target, where, security)
    try:
        if scheduler_file:
            client = Client(scheduler_file=scheduler_file, timeout=timeout, security=security,
                            set_as_default=False)
        else:
            client = Client(address, timeout=timeout, security=security, set_as_default=False, direct_to_workers=True)
    except (OSError, TimeoutError, ValueError, TypeError) as error:
        raise ClusterError(f"cannot reach the cluster at {where}: {error}") from None
    executor = DaskExecutor(client, client.scheduler.address)
    try:
        executor._wait_for_workers(workers_timeout)
    except ClusterError:
        executor.close()
        raise
    return executor


def probe_scheduler(address: str, where: str, timeout: float = PROBE_TIMEOUT) -> None:
    """A plain TCP connect to a tcp:// or tls:// scheduler: a refused port or an unknown
    host is a ClusterError at once; a port that does not answer is left to Dask's timeout."""
    import socket

    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp", "tls"):
        return
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except ConnectionRefusedError:
        raise ClusterError(f"cannot reach the cluster at {where}: connection refused "
                           f"(no scheduler listens on {host} port {port})") from None
    except socket.gaierror:
        raise ClusterError(f"cannot reach the cluster at {where}: unknown host {host!r}") from None
    except OSError:  # slow, filtered or unreachable: Dask's own timeout and message
        return


def _address_in(scheduler_file: str) -> str:
    import json

    try:
        with open(scheduler_file, encoding="utf-8") as f:
            return str(json.load(f).get("address", ""))
    except (OSError, ValueError, AttributeError) as error:
        raise ClusterError(f"cannot reach the cluster at {scheduler_file}: not a scheduler file ({error})") from None


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
    quiet_dask()
    from distributed import Client, LocalCluster

    from octoray.worker import AcceleratorPlugin

    cluster = LocalCluster(processes=False, n_workers=1, threads_per_worker=threads or os.cpu_count() or 1,
                           dashboard_address=None, silence_logs=False)
    client = Client(cluster, set_as_default=False)
    client.register_plugin(AcceleratorPlugin())
    return DaskExecutor(client, cluster.scheduler_address, cluster)
