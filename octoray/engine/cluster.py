"""Where the work runs, found the way Dask users expect.

In order: an explicit scheduler address or scheduler file (a tool's --scheduler /
--scheduler-file), then Dask's own configuration (DASK_SCHEDULER_ADDRESS, or the config key
``scheduler-address`` in Dask's YAML files), else the embedded default: threads in this
process on every card of the host (or its CPU), ready in microseconds.  ``cluster="local"`` starts an in-process Dask LocalCluster.
The CLI asks for an executor here and never talks to Dask itself.
"""

from __future__ import annotations

import os

from octoray.engine.lanes import LaneExecutor


def configured_scheduler() -> str | None:
    """Dask's configured scheduler address, read without importing dask unless a config
    file mentions one (importing dask costs 0.3 s of start-up)."""
    address = os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        return address
    if not _config_mentions("scheduler-address") and not _config_mentions("scheduler_address"):
        return None
    import dask

    return dask.config.get("scheduler-address", default=None)


def _config_mentions(key: str) -> bool:
    roots = [os.environ.get("DASK_CONFIG") or os.path.expanduser("~/.config/dask"), "/etc/dask"]
    for root in roots:
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            if name.endswith((".yaml", ".yml")):
                try:
                    with open(os.path.join(root, name), encoding="utf-8", errors="replace") as f:
                        if key in f.read():
                            return True
                except OSError:
                    continue
    return False


def _one_place(scheduler: str | None, scheduler_file: str | None, cluster: str | None) -> None:
    """--scheduler, --scheduler-file and --cluster each name where to run: one at most, and
    not an empty one (which would quietly mean the embedded default)."""
    from octoray.engine.faults import ClusterError

    named = {"--scheduler": scheduler, "--scheduler-file": scheduler_file, "--cluster": cluster}
    for option, value in named.items():
        if value is not None and not value.strip():
            raise ClusterError(f"{option} needs a value, not {value!r}")
    given = [option for option, value in named.items() if value]
    if len(given) > 1:
        raise ClusterError(f"{' and '.join(given)} each name where to run: give one")


def open_executor(threads: int | None = None, scheduler: str | None = None,
                  scheduler_file: str | None = None, cluster: str | None = None,
                  workers_timeout: float | None = None, accelerators: bool = True):
    """The executor to run on: see the module docstring for the order of discovery.

    A cluster must have a worker within `workers_timeout` seconds (the Dask executor's
    default when None; 0 to look once, as `octoray status` does).  Without `accelerators`
    (work no card does, such as decoding gzip) the embedded default is the CPU's thread
    pool: `threads` threads, however many cards the host has, and none is looked for."""
    _one_place(scheduler, scheduler_file, cluster)
    waiting = {} if workers_timeout is None else {"workers_timeout": workers_timeout}
    if scheduler or scheduler_file:
        from octoray.engine.dask_executor import connect

        return connect(scheduler, scheduler_file, **waiting)
    if cluster == "local":
        from octoray.engine.dask_executor import start_local_cluster

        return start_local_cluster(threads)
    address = configured_scheduler()
    if address:
        from octoray.engine.dask_executor import connect

        return connect(address, **waiting)
    if not accelerators:
        from octoray.engine.executors import LocalExecutor

        return LocalExecutor(threads)
    return LaneExecutor(threads)
