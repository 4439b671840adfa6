"""Dask worker preload: bind the worker to one accelerator, opened once.

    OCTORAY_ACCELERATOR=cpu OCTORAY_DEVICE=0 dask worker tcp://HOST:8786 --preload octoray.worker

The plugin opens the accelerator in ``setup`` (``OCTORAY_ACCELERATOR``, ``OCTORAY_DEVICE``),
installs it as the process's accelerator for every task, counts the tasks it runs, and
closes it in ``teardown``.
"""

from __future__ import annotations

try:
    from distributed import WorkerPlugin
except ImportError:  # octoray.worker is only imported where distributed is installed
    WorkerPlugin = object

PLUGIN_NAME = "octoray-accelerator"


class AcceleratorPlugin(WorkerPlugin):
    name = PLUGIN_NAME
    idempotent = True

    def __init__(self):
        self.accelerator = None
        self.tasks_done = 0

    def setup(self, worker) -> None:
        from octoray.kernels import install_local_accelerator, open_accelerator

        self.accelerator = open_accelerator()
        install_local_accelerator(self.accelerator)

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "memory" and start == "executing":
            self.tasks_done += 1

    def teardown(self, worker) -> None:
        from octoray.kernels import install_local_accelerator

        if self.accelerator is not None:
            install_local_accelerator(None)
            self.accelerator.close()
            self.accelerator = None


async def dask_setup(worker) -> None:
    """Called by ``dask worker --preload octoray.worker``."""
    await worker.plugin_add(AcceleratorPlugin(), name=PLUGIN_NAME)


def describe_worker(dask_worker) -> dict:
    """Run on each worker by `octoray status`: its accelerator, threads and tasks done."""
    from octoray.kernels import local_accelerator

    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    accelerator = plugin.accelerator if plugin and plugin.accelerator else local_accelerator()
    return {"name": str(dask_worker.name), "accelerator": accelerator.name, "threads": dask_worker.state.nthreads,
            "tasks": plugin.tasks_done if plugin else 0, "preloaded": plugin is not None}
