"""The Config dataclass and its resolution, done once per executor.

Precedence, highest first: keyword arguments (and the ``config`` mapping given to an executor),
environment variables ``CLOUDBUTTON_<KEY>``, ``./cloudbutton.toml``,
``~/.config/cloudbutton/config.toml``, defaults. Each file holds flat ``key = value`` lines.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

ENV_PREFIX = "CLOUDBUTTON_"


@dataclasses.dataclass(frozen=True)
class Config:
    backend: str = "local"
    """Where calls run: ``local`` (worker processes on this machine), ``dask``, or a plugin's name."""
    max_workers: int | None = None
    """Calls running at once; ``None`` means the backend's default (the CPU count for ``local``)."""
    chunksize: int | None = None
    """Calls sent to a worker at a time; ``None`` sizes batches automatically."""
    timeout: float | None = None
    """Seconds a call may run before it is stopped with ``CallTimeoutError``; ``None``: no limit."""
    runtime_memory: int | None = None
    """MB of memory a call may allocate (enforced on ``local``); ``None``: no limit."""
    retries: int = 0
    """Times a call whose worker was lost is run again before ``WorkerLostError`` is raised."""
    show_progressbar: bool | None = None
    """Progress bar on stderr while waiting; ``None``: only when stderr is a terminal."""
    dask_address: str | None = None
    """Scheduler of an existing Dask cluster; ``None``: the executor starts a LocalCluster."""
    storage_url: str | None = None
    """Where data objects live (any fsspec URL); ``None``: ``~/.cache/cloudbutton/storage``."""
    storage_threshold: int = 1 << 20
    """Bytes above which a call's arguments or result travel through storage instead of the control channel."""
    state_url: str | None = None
    """Redis-protocol server for shared state (``redis://``, ``rediss://``, ``unix://``); ``None``: embedded Valkey."""
    state_timeout: float = 5.0
    """Seconds to wait for the state server (connecting or replying) before ``StateError`` is raised."""

    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    """Where each value came from (not a setting)."""

    def with_overrides(self, source: str = "argument", **changes: Any) -> Config:
        """A copy with ``changes`` (None values ignored) checked like any other layer."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        _check_keys(changes, source)
        checked = {k: _convert(k, v, source) for k, v in changes.items()}
        return dataclasses.replace(self, **checked, sources={**self.sources, **dict.fromkeys(checked, source)})

    def show(self) -> str:
        """The resolved settings, one per line, with where each came from."""
        lines = []
        for name in config_keys():
            lines.append(f"{name} = {getattr(self, name)!r}  # {self.sources.get(name, 'default')}")
        return "\n".join(lines)


def config_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(Config) if f.name != "sources"]


MAX_SECONDS = 10**8
"""The longest time a setting may give (about three years): longer waits overflow the clocks of
threads and sockets; ``None`` is the way to say "no limit"."""
_RANGES = {  # key: (smallest, largest), both allowed
    "max_workers": (1, 10**6),
    "chunksize": (1, 10**9),
    "timeout": (1e-3, MAX_SECONDS),
    "runtime_memory": (1, 2**30),  # MB: up to 1 PiB
    "retries": (0, 1000),
    "storage_threshold": (1, 2**40),
    "state_timeout": (1e-3, MAX_SECONDS),
}


def _convert(key: str, value: Any, source: str) -> Any:
    """Check (and, for text from env/files, convert) one value; raise ConfigError naming the key."""
    field = {f.name: f for f in dataclasses.fields(Config)}[key]
    kind = field.type.split(" | ")[0]
    optional = "None" in field.type
    if isinstance(value, str) and kind != "str":
        text = value.strip().lower()
        if optional and text in ("", "none", "null"):
            return None
        try:
            if kind == "bool":
                if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                value = text in ("1", "true", "yes", "on")
            else:
                value = {"int": int, "float": float}[kind](value)
        except ValueError:
            raise ConfigError(f"{key} = {value!r} (from {source}) is not a valid {kind}") from None
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} (from {source}) may not be None")
    expected = {"str": str, "int": int, "float": (int, float), "bool": bool}[kind]
    if not isinstance(value, expected) or (kind != "bool" and isinstance(value, bool)):
        raise ConfigError(f"{key} = {value!r} (from {source}) must be of type {kind}")
    if key in _RANGES:
        low, high = _RANGES[key]
        if not low <= value <= high:  # also refuses nan, which compares false with everything
            unit = " (None: no limit)" if key in ("timeout", "runtime_memory") else ""
            raise ConfigError(f"{key} = {value!r} (from {source}) must be between {low:g} and {high:g}{unit}")
    if key == "backend":
        from .backends import backend_names, known_backends

        if value not in known_backends and value not in backend_names():
            allowed = ", ".join(sorted(backend_names()))
            raise ConfigError(f"backend = {value!r} (from {source}) is unknown; allowed: {allowed}")
    return value


def _check_keys(values: Mapping[str, Any], source: str) -> None:
    unknown = sorted(set(values) - set(config_keys()))
    if unknown:
        allowed = ", ".join(config_keys())
        raise ConfigError(f"unknown config key {unknown[0]!r} in {source}; allowed keys: {allowed}")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None


def user_config_path() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "cloudbutton" / "config.toml"


def resolve_config(config: Config | Mapping[str, Any] | None = None, **overrides: Any) -> Config:
    """Resolve the layers into one Config; ``config`` and ``overrides`` are the highest layer."""
    _check_keys(overrides, "keyword argument")
    if isinstance(config, Config):
        config = {k: getattr(config, k) for k in config_keys()}
    layers: list[tuple[str, Mapping[str, Any]]] = [
        (str(user_config_path()), _read_toml(user_config_path())),
        (str(Path.cwd() / "cloudbutton.toml"), _read_toml(Path.cwd() / "cloudbutton.toml")),
        ("environment", {k[len(ENV_PREFIX):].lower(): v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}),
        ("config argument", dict(config or {})),
        ("keyword argument", {k: v for k, v in overrides.items() if v is not None}),
    ]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, layer in layers:
        if source == "environment":
            _check_keys(layer, "the environment (CLOUDBUTTON_* variables)")
        else:
            _check_keys(layer, source)
        for key, value in layer.items():
            where = f"{ENV_PREFIX}{key.upper()}" if source == "environment" else source
            values[key] = _convert(key, value, where)
            sources[key] = where
    return Config(**values, sources=sources)
