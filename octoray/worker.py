"""The Dask worker preload, by its public name: ``dask worker ADDR --preload octoray.worker``.

The worker side lives in the engine (octoray.engine.dask_worker: the plugin that binds a
worker to its accelerators and answers the client's requests); this name stays stable for
the command lines and scripts that start workers.
"""

from octoray.engine.dask_worker import AcceleratorPlugin, dask_setup  # noqa: F401 - the preload's entry point
