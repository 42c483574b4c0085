"""``lithops.executors``: Lithops' executors as cloudbutton's :class:`~cloudbutton.executor.FunctionExecutor`
with a Lithops config (see :mod:`cloudbutton.lithops.config`)."""

from __future__ import annotations

import os
from typing import Any

from ..backends import backend_names
from ..executor import FunctionExecutor as _FunctionExecutor
from ..futures import FuturesList
from ..storage import resolve_url
from .config import LOCALHOST, S3_STORAGES, default_config, translate, warn_ignored
from .storage import Storage, _file_storage_url
from .utils import setup_lithops_logger

__all__ = ["FunctionExecutor", "LocalhostExecutor", "ServerlessExecutor", "StandaloneExecutor"]


class FunctionExecutor(_FunctionExecutor):
    """``FunctionExecutor(mode=None, config=None, config_file=None, backend=None, storage=None,
    monitoring=None, log_level=False, **kwargs)``: keyword arguments are settings of the compute
    backend's section (``max_workers``, ``worker_processes``, ``runtime_memory``, ...), as in Lithops.
    ``lithops_config`` is the complete Lithops config; ``config`` the resolved cloudbutton one."""

    def __init__(
        self, mode: str | None = None, config: dict | None = None, config_file: str | None = None,
        backend: str | None = None, storage: str | None = None, monitoring=None, log_level=False, **kwargs: Any,
    ):
        if log_level:
            setup_lithops_logger(log_level)
        overwrite = {"lithops": {}, "backend": {k: v for k, v in kwargs.items() if v is not None}}
        for key, value in (("mode", mode), ("backend", backend), ("storage", storage)):
            if value is not None:
                overwrite["lithops"][key] = value
        self.lithops_config = default_config(config_file=config_file, config_data=config, config_overwrite=overwrite)
        translation = translate(self.lithops_config, backend_names())
        warn_ignored(translation.ignored)
        os.environ.update(translation.storage.env)  # credentials the AWS way, for this process and its workers
        settings = translation.settings
        if "storage_url" not in settings:
            settings["storage_url"] = _file_storage_url()
        super().__init__(**settings)
        self._call_env.update(translation.storage.env)  # workers started earlier get the credentials too

    def map(
        self, map_function, map_iterdata, chunksize=None, extra_args=None, extra_env=None, runtime_memory=None,
        obj_chunk_size=None, obj_chunk_number=None, obj_newline="\n", timeout=None, include_modules=None,
        exclude_modules=None, retries=None,
    ) -> FuturesList:
        """Lithops' ``map`` (its parameters in its order)."""
        return super().map(
            map_function, map_iterdata, extra_args=extra_args, extra_env=extra_env, runtime_memory=runtime_memory,
            timeout=timeout, chunksize=chunksize, include_modules=include_modules or None,
            exclude_modules=exclude_modules or None, retries=retries, obj_chunk_size=obj_chunk_size,
            obj_chunk_number=obj_chunk_number, obj_newline=obj_newline,
        )

    def map_reduce(
        self, map_function, map_iterdata, reduce_function, chunksize=None, extra_args=None, extra_args_reduce=None,
        extra_env=None, map_runtime_memory=None, reduce_runtime_memory=None, timeout=None, obj_chunk_size=None,
        obj_chunk_number=None, obj_newline="\n", obj_reduce_by_key=False, spawn_reducer=20, include_modules=None,
        exclude_modules=None, retries=None, reducer_one_per_object=False,
    ) -> FuturesList:
        """Lithops' ``map_reduce`` (its parameters in its order): the list holds the maps' futures too
        (``get_result`` of it gives the reducers' values)."""
        reducers = super().map_reduce(
            map_function, map_iterdata, reduce_function, extra_args=extra_args, extra_env=extra_env,
            map_runtime_memory=map_runtime_memory, reduce_runtime_memory=reduce_runtime_memory, timeout=timeout,
            chunksize=chunksize, obj_chunk_size=obj_chunk_size, obj_chunk_number=obj_chunk_number,
            obj_newline=obj_newline, reducer_one_per_object=reducer_one_per_object or obj_reduce_by_key,
            spawn_reducer=spawn_reducer, include_modules=include_modules or None,
            exclude_modules=exclude_modules or None, retries=retries, extra_args_reduce=extra_args_reduce,
        )
        futures = FuturesList([*reducers.map_futures, *reducers], self)
        futures.reduced = not (reducer_one_per_object or obj_reduce_by_key)  # get_result gives the value
        return futures

    def _new_storage(self) -> Storage:
        return Storage(config=self.lithops_config)

    def _resolve_object(self, ref: str) -> str:
        """Lithops' object references too: ``<storage backend>://bucket/key`` and ``bucket/key``."""
        scheme, sep, rest = ref.partition("://")
        storage = self.lithops_config["lithops"]["storage"]
        if sep and scheme == LOCALHOST:
            return f"{_file_storage_url().rstrip('/')}/{rest}"
        if sep and scheme in S3_STORAGES:
            return f"s3://{rest}"
        if not sep and not os.path.isabs(ref):  # bucket/key, as Lithops reads it
            return f"s3://{ref}" if storage in S3_STORAGES else f"{_file_storage_url().rstrip('/')}/{ref}"
        return resolve_url(ref, self.storage_url)


class LocalhostExecutor(FunctionExecutor):
    """Lithops' ``LocalhostExecutor``: local worker processes (and localhost storage unless told)."""

    def __init__(self, config=None, config_file=None, storage=None, monitoring=None, log_level=False, **kwargs):
        super().__init__(backend=LOCALHOST, config=config, config_file=config_file, storage=storage or LOCALHOST,
                         monitoring=monitoring, log_level=log_level, **kwargs)


class ServerlessExecutor(FunctionExecutor):
    """Lithops' ``ServerlessExecutor``: its backend if cloudbutton has one by that name, else local
    workers (with the warning of an ignored setting)."""

    def __init__(self, config=None, config_file=None, backend=None, storage=None, monitoring=None, log_level=False,
                 **kwargs):
        super().__init__(mode="serverless", config=config, config_file=config_file, backend=backend, storage=storage,
                         monitoring=monitoring, log_level=log_level, **kwargs)


class StandaloneExecutor(FunctionExecutor):
    """Lithops' ``StandaloneExecutor``: as :class:`ServerlessExecutor`."""

    def __init__(self, config=None, config_file=None, backend=None, storage=None, monitoring=None, log_level=False,
                 **kwargs):
        super().__init__(mode="standalone", config=config, config_file=config_file, backend=backend, storage=storage,
                         monitoring=monitoring, log_level=log_level, **kwargs)
