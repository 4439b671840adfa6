"""The engine: an ordered, bounded streaming map over an executor (threads or a Dask cluster)."""
