"""The engine's executor on a Dask cluster: chunks scattered to workers, kept here until done.

- Each chunk travels with ``scatter(hash=False)`` (not as a task argument, which would pass
  through the scheduler and be hashed: identical chunks would collapse into one key).
- The client keeps every chunk until its result is taken, because scattered data dies with
  its worker: when a worker is lost the chunk is scattered again and resubmitted.
- Waiting is bounded: with no worker to run on, or the scheduler gone, the run ends with
  ClusterError instead of hanging.
"""

from __future__ import annotations

import os
import time

CONNECT_TIMEOUT = 10.0
NO_WORKERS_TIMEOUT = 30.0
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


class _Task:
    """One chunk's task: `sending` until its scatter and submit are done, then `future`."""

    __slots__ = ("sending", "_future", "args", "fn", "resubmitted")

    def __init__(self, sending, fn, args):
        self.sending, self._future, self.fn, self.args = sending, None, fn, args
        self.resubmitted = 0

    @property
    def future(self):
        if self._future is None:
            self._future = self.sending.result()  # a send's ClusterError surfaces here
        return self._future

    @future.setter
    def future(self, value) -> None:
        self._future = value

    def cancel(self) -> None:
        self.sending.cancel()
        try:
            if self._future is not None or self.sending.done():
                self.future.cancel()
        except Exception:  # the client is already closed, or the send failed: nothing to cancel
            pass


class DaskExecutor:
    in_process = False

    def __init__(self, client, address: str, cluster=None):
        from concurrent.futures import ThreadPoolExecutor

        self.client = client
        self.address = address
        self._cluster = cluster  # a LocalCluster this executor started, closed with it
        self.workers = max(1, self._threads())
        self.jobs_per_task = max(1, int(os.environ.get("OCTORAY_JOBS_PER_TASK") or JOBS_PER_TASK))
        # Scatter and submit are round trips (10-20 ms a chunk): two sender threads overlap
        # them with reading the next chunk and with the workers' compute.
        self._senders = ThreadPoolExecutor(2, thread_name_prefix="octoray-send")
        self._workers_seen = 0.0

    def _threads(self) -> int:
        return sum(w.get("nthreads", 1) for w in self.client.scheduler_info()["workers"].values())

    def _send(self, fn, args):
        """Scatter the chunk and submit its task; a worker that died under the scatter is
        noticed by the scheduler within moments, so try again on the others."""
        data = bytes(args[0]) if isinstance(args[0], memoryview) else args[0]
        for attempt in range(RESUBMISSIONS + 1):
            self._wait_for_workers()
            try:
                scattered = self.client.scatter(data, hash=False)
                return self.client.submit(fn, scattered, *args[1:], pure=False)
            except (OSError, TimeoutError) as error:
                failure = error
                self._workers_seen = 0.0
                self._check_alive()
                time.sleep(0.5)
                self._refresh()
        raise ClusterError(f"lost the cluster at {self.address}: {failure}")

    def _refresh(self) -> None:
        try:
            self.client.sync(self.client._update_scheduler_info)
        except (OSError, TimeoutError) as error:
            raise ClusterError(f"lost the cluster at {self.address}: {error}") from None

    def submit(self, fn, *args) -> _Task:
        return _Task(self._senders.submit(self._send, fn, args), fn, args)

    def result(self, task: _Task):
        from distributed import TimeoutError as DaskTimeout

        while True:
            try:
                return task.future.result(timeout=1.0)
            except DaskTimeout:
                self._check_alive()
                continue
            except Exception as error:
                if not self._worker_lost(error):
                    raise
                if task.resubmitted >= RESUBMISSIONS:
                    raise ClusterError(f"chunk failed on {RESUBMISSIONS + 1} workers: {error}") from None
            self._check_alive()
            self._workers_seen = 0.0
            task.future = self._send(task.fn, task.args)
            task.resubmitted += 1

    @staticmethod
    def _worker_lost(error: BaseException) -> bool:
        from concurrent.futures import CancelledError

        from distributed.scheduler import KilledWorker

        return isinstance(error, (CancelledError, KilledWorker)) or type(error).__name__ in (
            "FutureCancelledError", "CommClosedError")

    def _check_alive(self) -> None:
        if self.client.status not in ("running", "connecting"):
            raise ClusterError(f"lost the cluster at {self.address}: the scheduler went away")

    def _wait_for_workers(self) -> None:
        if time.monotonic() - self._workers_seen < 1.0:  # asked the scheduler a moment ago
            return
        deadline = time.monotonic() + NO_WORKERS_TIMEOUT
        while True:
            self._check_alive()
            try:
                if self.client.scheduler_info()["workers"]:
                    self._workers_seen = time.monotonic()
                    return
            except (OSError, TimeoutError) as error:
                raise ClusterError(f"lost the cluster at {self.address}: {error}") from None
            if time.monotonic() > deadline:
                raise ClusterError(f"the cluster at {self.address} has no workers")
            time.sleep(0.2)
            self._refresh()

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
            self.client.close(timeout=5)
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
            timeout: float = CONNECT_TIMEOUT, security=None) -> DaskExecutor:
    """Connect to a running scheduler; ClusterError within `timeout` if it cannot be reached."""
    quiet_dask()
    where = address or scheduler_file
    if scheduler_file and not os.path.exists(scheduler_file):  # Client would wait forever
        raise ClusterError(f"cannot reach the cluster at {where}: no such scheduler file")
    from distributed import Client

    _check_tls(address or _address_in(scheduler_file), where, security)
    try:
        if scheduler_file:
            client = Client(scheduler_file=scheduler_file, timeout=timeout, security=security,
                            set_as_default=False)
        else:
            client = Client(address, timeout=timeout, security=security, set_as_default=False, direct_to_workers=True)
    except (OSError, TimeoutError, ValueError, TypeError) as error:
        raise ClusterError(f"cannot reach the cluster at {where}: {error}") from None
    return DaskExecutor(client, client.scheduler.address)


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
