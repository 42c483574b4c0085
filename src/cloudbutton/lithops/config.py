"""Lithops configuration (``lithops.config``): Lithops' config dicts and YAML files, and how they map
onto cloudbutton's settings.

A Lithops config is read as Lithops does: the ``config`` argument, else the file named by
``LITHOPS_CONFIG_FILE``, ``./.lithops_config``, ``~/.lithops/config`` or ``/etc/lithops/config``
(JSON in ``LITHOPS_CONFIG`` too); with none, localhost. :func:`translate` maps it: the ``localhost``
compute backend is cloudbutton's ``local`` (a cloudbutton backend name, such as ``dask``, is used as
it is); ``localhost`` storage is the default file storage; ``aws_s3``, ``ibm_cos``, ``minio`` and
``ceph`` storage are ``s3://`` URLs with their endpoint and credentials. What cloudbutton cannot use
is ignored with one warning that names it.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

LOCALHOST = "localhost"
CONFIG_FILE_GLOBAL = os.path.join("/etc", "lithops", "config")
S3_STORAGES = ("aws_s3", "ibm_cos", "minio", "ceph")
"""Lithops storage backends that speak S3: their objects are ``s3://`` URLs."""

# Keys of the "lithops" section that mean nothing here (logging, monitoring, Lithops' own data
# handling): accepted silently. Others that cloudbutton cannot honour are named in the warning.
_QUIET_KEYS = {
    "mode", "backend", "storage", "log_level", "log_format", "log_stream", "log_filename", "monitoring",
    "monitoring_interval", "data_cleaner", "data_limit", "chunksize", "storage_bucket", "include_modules",
    "exclude_modules", "customized_runtime", "execution_timeout", "retries",
}
_DEFAULT_BACKENDS = {LOCALHOST: LOCALHOST, "serverless": "aws_lambda", "standalone": "aws_ec2"}
KNOWN_SECTIONS = {  # Lithops' own sections: unused ones are ignored silently, as Lithops does
    "aws", "aws_lambda", "aws_batch", "aws_ec2", "aws_s3", "ibm", "ibm_cf", "code_engine", "ibm_vpc", "ibm_cos",
    "gcp", "gcp_functions", "gcp_cloudrun", "gcp_storage", "azure", "azure_functions", "azure_containers",
    "azure_vms", "azure_storage", "aliyun", "aliyun_fc", "aliyun_oss", "oracle", "oracle_f", "oracle_oss", "k8s",
    "knative", "openwhisk", "singularity", "vm", "standalone", "serverless", "minio", "ceph", "redis", "swift",
    "infinispan", "infinispan_hotrod", "rabbitmq", "prometheus", "localhost", "lithops", "backend",
}
_BACKEND_KEYS = {"max_workers", "worker_processes", "runtime_memory", "runtime_timeout", "runtime", "version",
                 "user_agent", "storage_bucket", "region"}


def load_yaml_config(config_filename: str) -> dict:
    """The YAML file's content; {} if there is no such file."""
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"reading the Lithops config {config_filename} needs PyYAML: "
                          "pip install 'cloudbutton[lithops]'") from None

    try:
        with open(config_filename) as f:
            return yaml.safe_load(f) or {}
    except FileNotFoundError:
        return {}


def get_default_config_filename() -> str | None:
    """The first of ``LITHOPS_CONFIG_FILE``, ``./.lithops_config``, ``~/.lithops/config``,
    ``/etc/lithops/config`` that is set or present."""
    if "LITHOPS_CONFIG_FILE" in os.environ:
        return os.environ["LITHOPS_CONFIG_FILE"]
    if os.path.exists(".lithops_config"):
        return os.path.abspath(".lithops_config")
    home = os.path.join(os.path.expanduser("~"), ".lithops", "config")
    for name in (home, CONFIG_FILE_GLOBAL):
        if os.path.exists(name):
            return name
    return None


def load_config(config_file: str | None = None, log: bool = True) -> dict:
    """The Lithops config from ``config_file`` or the default places; localhost if there is none."""
    data = None
    if config_file:
        name = os.path.expanduser(config_file)
        if not os.path.exists(name):
            raise FileNotFoundError(f"Config file {name} doesn't exist")
        data = load_yaml_config(name)
    elif "LITHOPS_CONFIG" in os.environ:
        data = json.loads(os.environ["LITHOPS_CONFIG"])
    else:
        name = get_default_config_filename()
        data = load_yaml_config(name) if name else None
    return data or {"lithops": {"mode": LOCALHOST, "backend": LOCALHOST, "storage": LOCALHOST}}


def default_config(config_file=None, config_data=None, config_overwrite=None, load_storage_config=True) -> dict:
    """A complete Lithops config dict: ``config_data`` (else the file), with ``config_overwrite``'s
    ``lithops`` and ``backend`` sections applied, and the backend and storage named (localhost by default)."""
    config = copy.deepcopy(config_data) or load_config(config_file)
    if not isinstance(config, dict):
        raise ConfigError(f"a Lithops config is a mapping of sections, not {type(config).__name__}")
    for name, value in config.items():
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"section {name!r} of the Lithops config must be a mapping, not {value!r}")
    config_overwrite = config_overwrite or {}
    section = config["lithops"] = dict(config.get("lithops") or {})
    section.update(config_overwrite.get("lithops") or {})
    mode = section.get("mode") or LOCALHOST
    if "mode" in (config_overwrite.get("lithops") or {}) and "backend" not in config_overwrite["lithops"]:
        section.pop("backend", None)  # a mode asked for: its backend, not the file's
    if not section.get("backend"):
        section["backend"] = (config.get(mode) or {}).get("backend") or _DEFAULT_BACKENDS.get(mode, LOCALHOST)
    backend = section["backend"]
    section.setdefault("mode", mode)
    section.setdefault("storage", LOCALHOST)  # Lithops' default is aws_s3; calls run here, so local files
    config[backend] = dict(config.get(backend) or {})
    config[backend].update(config_overwrite.get("backend") or {})
    if "aws" in config and section["storage"] == "aws_s3":  # Lithops takes aws_s3's credentials from "aws" too
        config["aws_s3"] = {**config["aws"], **(config.get("aws_s3") or {})}
    return config


def extract_storage_config(config: dict) -> dict:
    """``{"backend": <storage>, <storage>: {its section}}`` of a Lithops config."""
    backend = config["lithops"].get("storage", LOCALHOST)
    return {"backend": backend, backend: dict(config.get(backend) or {})}


@dataclass
class StorageSettings:
    """Where a Lithops storage config puts objects, in cloudbutton's terms."""

    backend: str  # the Lithops name: "localhost", "aws_s3", ...
    url: str | None  # the storage URL (None: cloudbutton's default file storage)
    bucket: str  # Lithops' storage_bucket
    options: dict = field(default_factory=dict)  # fsspec storage options (credentials, endpoint)
    env: dict = field(default_factory=dict)  # the same, as the AWS_* variables workers read
    ignored: list = field(default_factory=list)


def storage_settings(storage_config: dict) -> StorageSettings:
    """Map ``extract_storage_config``'s dict to a storage URL, options and environment."""
    backend = storage_config.get("backend", LOCALHOST)
    section = dict(storage_config.get(backend) or {})
    if backend == LOCALHOST:
        return StorageSettings(LOCALHOST, None, section.get("storage_bucket") or "storage")
    if backend not in S3_STORAGES:
        return StorageSettings(LOCALHOST, None, "storage", ignored=[f"storage backend {backend!r} (using local files)"])
    bucket = section.get("storage_bucket") or "lithops-data"
    endpoint = section.get("endpoint") or section.get("private_endpoint")
    if backend == "ibm_cos" and not endpoint and section.get("region"):
        endpoint = f"https://s3.{section['region']}.cloud-object-storage.appdomain.cloud"
    if endpoint and "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    pairs = {  # Lithops key: (s3fs option, environment variable)
        "access_key_id": ("key", "AWS_ACCESS_KEY_ID"),
        "secret_access_key": ("secret", "AWS_SECRET_ACCESS_KEY"),
        "session_token": ("token", "AWS_SESSION_TOKEN"),
    }
    options, env = {}, {}
    for key, (option, variable) in pairs.items():
        if section.get(key):
            options[option], env[variable] = section[key], str(section[key])
    if endpoint:
        options["endpoint_url"], env["AWS_ENDPOINT_URL"] = endpoint, endpoint
    if section.get("region") and backend == "aws_s3":
        env["AWS_DEFAULT_REGION"] = section["region"]
    ignored = [f"{backend}.{key}" for key in section if key in ("api_key", "iam_api_key", "service_instance_id")]
    return StorageSettings(backend, f"s3://{bucket}", bucket, options, env, ignored)


@dataclass
class Translation:
    """A Lithops config in cloudbutton's terms: executor settings, storage, and what was ignored."""

    settings: dict
    storage: StorageSettings
    ignored: list


def translate(config: dict, known_backends=()) -> Translation:
    """Map a complete Lithops config (see :func:`default_config`) onto cloudbutton settings."""
    section = config.get("lithops") or {}
    backend = section.get("backend", LOCALHOST)
    storage = storage_settings(extract_storage_config(config))
    ignored = list(storage.ignored)
    settings: dict[str, Any] = {}
    if backend == LOCALHOST:
        settings["backend"] = "local"
    elif backend in known_backends:
        settings["backend"] = backend
    else:
        settings["backend"] = "local"
        ignored.append(f"compute backend {backend!r} (running on local worker processes)")
    compute = config.get(backend) or {}
    numbers = {  # cloudbutton key: (type, where in the Lithops config, value)
        "max_workers": (int, f"{backend}.max_workers", compute.get("max_workers")),
        "runtime_memory": (int, f"{backend}.runtime_memory", compute.get("runtime_memory")),
        "timeout": (float, f"{backend}.runtime_timeout", compute.get("runtime_timeout")),
        "retries": (int, "lithops.retries", section.get("retries")),
    }
    if numbers["max_workers"][2] is None:
        numbers["max_workers"] = (int, f"{backend}.worker_processes", compute.get("worker_processes"))
    if numbers["timeout"][2] is None:
        numbers["timeout"] = (float, "lithops.execution_timeout", section.get("execution_timeout"))
    for key, (kind, where, value) in numbers.items():
        if value is not None and value != "":
            try:
                settings[key] = kind(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where} = {value!r} in the Lithops config is not a number") from None
    if storage.url:
        settings["storage_url"] = storage.url
    ignored += [f"lithops.{key}" for key in section if key not in _QUIET_KEYS]
    ignored += [f"{backend}.{key}" for key in compute if key not in _BACKEND_KEYS]
    ignored += [f"section {name!r}" for name in config if name not in KNOWN_SECTIONS and name not in known_backends]
    return Translation(settings, storage, ignored)


_warned: set[str] = set()


def warn_ignored(ignored: list) -> None:
    """One warning naming everything of a Lithops config cloudbutton does not use (once per process)."""
    message = "cloudbutton.lithops ignores what it cannot use in the Lithops config: " + ", ".join(ignored)
    if ignored and message not in _warned:
        _warned.add(message)
        warnings.warn(message, UserWarning, stacklevel=3)
