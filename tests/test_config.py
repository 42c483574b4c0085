"""Configuration: layers and their precedence, where each value came from, conversion and validation."""

import dataclasses
import os
import types

import pytest

from cloudbutton import Config, ConfigError, FunctionExecutor
from cloudbutton.config import config_keys, resolve_config

KWARG, CONFIG_ARG = "keyword argument", "config argument"


@pytest.fixture(autouse=True)
def layers(tmp_path, monkeypatch):
    """No CLOUDBUTTON_* variable, a private user config dir and an empty working directory."""
    for key in list(os.environ):
        if key.startswith("CLOUDBUTTON_"):
            monkeypatch.delenv(key)
    xdg = tmp_path / "xdg"
    work = tmp_path / "work"
    (xdg / "cloudbutton").mkdir(parents=True)
    work.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.chdir(work)
    return types.SimpleNamespace(user=xdg / "cloudbutton" / "config.toml", cwd=work / "cloudbutton.toml")


# --- precedence and sources ---------------------------------------------------------------------


def test_defaults_with_no_layer():
    config = resolve_config()
    assert config == Config()
    assert (config.backend, config.max_workers, config.retries, config.timeout) == ("local", None, 0, None)
    assert dict(config.sources) == {}
    for line in config.show().splitlines():
        assert line.endswith("# default")


def _set_layers(layers, monkeypatch, present):
    """max_workers is 1 in the user file, 2 in ./cloudbutton.toml, 3 in the environment, 4 in the
    config mapping and 5 as a keyword argument; only the layers named in ``present`` are set."""
    if "user" in present:
        layers.user.write_text("max_workers = 1\n")
    if "cwd" in present:
        layers.cwd.write_text("max_workers = 2\n")
    if "env" in present:
        monkeypatch.setenv("CLOUDBUTTON_MAX_WORKERS", "3")
    config = {"max_workers": 4} if "config" in present else None
    kwargs = {"max_workers": 5} if "kwargs" in present else {}
    return resolve_config(config, **kwargs)


ALL_LAYERS = ["user", "cwd", "env", "config", "kwargs"]


@pytest.mark.parametrize("top", range(len(ALL_LAYERS)))
def test_each_layer_overrides_the_ones_below(layers, monkeypatch, top):
    config = _set_layers(layers, monkeypatch, ALL_LAYERS[: top + 1])
    expected_source = [str(layers.user), str(layers.cwd), "CLOUDBUTTON_MAX_WORKERS", CONFIG_ARG, KWARG][top]
    assert config.max_workers == top + 1
    assert config.sources["max_workers"] == expected_source
    assert f"max_workers = {top + 1}  # {expected_source}" in config.show().splitlines()


@pytest.mark.parametrize("only", ALL_LAYERS)
def test_each_layer_alone_beats_the_default(layers, monkeypatch, only):
    config = _set_layers(layers, monkeypatch, [only])
    assert config.max_workers == ALL_LAYERS.index(only) + 1


def test_every_value_names_its_own_source(layers, monkeypatch):
    layers.user.write_text('max_workers = 3\nchunksize = 11\ndask_address = "tcp://user:1"\n')
    layers.cwd.write_text("chunksize = 7\ntimeout = 9.5\n")
    monkeypatch.setenv("CLOUDBUTTON_TIMEOUT", "2.5")
    monkeypatch.setenv("CLOUDBUTTON_SHOW_PROGRESSBAR", "false")
    config = resolve_config({"retries": 2, "show_progressbar": True}, runtime_memory=256)

    expected = {
        "backend": ("local", "default"),
        "max_workers": (3, str(layers.user)),
        "chunksize": (7, str(layers.cwd)),
        "timeout": (2.5, "CLOUDBUTTON_TIMEOUT"),
        "runtime_memory": (256, KWARG),
        "retries": (2, CONFIG_ARG),
        "show_progressbar": (True, CONFIG_ARG),
        "dask_address": ("tcp://user:1", str(layers.user)),
        "state_url": (None, "default"),
        "storage_url": (None, "default"),
        "storage_threshold": (1 << 20, "default"),
        "state_timeout": (5.0, "default"),
    }
    assert sorted(expected) == sorted(config_keys())
    shown = config.show().splitlines()
    assert len(shown) == len(expected)
    for key, (value, source) in expected.items():
        assert getattr(config, key) == value, key
        assert config.sources.get(key, "default") == source, key
        assert f"{key} = {value!r}  # {source}" in shown


def test_a_keyword_argument_of_none_means_not_given(layers):
    layers.cwd.write_text("max_workers = 2\n")
    config = resolve_config(max_workers=None, timeout=None)
    assert config.max_workers == 2 and config.sources["max_workers"] == str(layers.cwd)
    assert config.timeout is None and "timeout" not in config.sources


def test_a_config_object_round_trips_and_takes_overrides(monkeypatch):
    monkeypatch.setenv("CLOUDBUTTON_RETRIES", "3")
    base = resolve_config(max_workers=2)
    assert resolve_config(base) == base
    changed = resolve_config(base, timeout=4)
    assert (changed.max_workers, changed.retries, changed.timeout) == (2, 3, 4)
    assert changed.sources["timeout"] == KWARG


def test_function_executor_resolves_the_files(layers):
    layers.cwd.write_text("max_workers = 2\nretries = 1\n")
    with FunctionExecutor() as fexec:
        assert (fexec.config.max_workers, fexec.config.retries) == (2, 1)
        assert fexec.config.sources["retries"] == str(layers.cwd)
        assert fexec.backend.workers == 2


def test_function_executor_keyword_arguments_win(layers, monkeypatch):
    layers.cwd.write_text("max_workers = 4\n")
    monkeypatch.setenv("CLOUDBUTTON_MAX_WORKERS", "3")
    with FunctionExecutor(max_workers=2, config={"retries": 1}, timeout=30) as fexec:
        assert (fexec.config.max_workers, fexec.config.retries, fexec.config.timeout) == (2, 1, 30)
        assert fexec.config.sources["max_workers"] == KWARG


# --- conversion of text from the environment ----------------------------------------------------


@pytest.mark.parametrize(
    "key, text, expected",
    [
        ("max_workers", "4", 4),
        ("max_workers", " 8 ", 8),
        ("max_workers", "none", None),
        ("max_workers", "None", None),
        ("max_workers", "null", None),
        ("max_workers", "", None),
        ("chunksize", "16", 16),
        ("retries", "0", 0),
        ("retries", "2", 2),
        ("runtime_memory", "512", 512),
        ("timeout", "2.5", 2.5),
        ("timeout", "3", 3.0),
        ("timeout", "1e1", 10.0),
        ("timeout", "none", None),
        ("show_progressbar", "true", True),
        ("show_progressbar", "TRUE", True),
        ("show_progressbar", "1", True),
        ("show_progressbar", "yes", True),
        ("show_progressbar", "on", True),
        ("show_progressbar", "false", False),
        ("show_progressbar", "False", False),
        ("show_progressbar", "0", False),
        ("show_progressbar", "no", False),
        ("show_progressbar", "off", False),
        ("show_progressbar", "none", None),
        ("backend", "dask", "dask"),
        ("dask_address", "tcp://10.0.0.1:8786", "tcp://10.0.0.1:8786"),
    ],
)
def test_environment_text_is_converted(monkeypatch, key, text, expected):
    monkeypatch.setenv(f"CLOUDBUTTON_{key.upper()}", text)
    config = resolve_config()
    assert getattr(config, key) == expected
    assert type(getattr(config, key)) is type(expected)
    assert config.sources[key] == f"CLOUDBUTTON_{key.upper()}"


def test_environment_none_overrides_a_file_value(layers, monkeypatch):
    layers.cwd.write_text("max_workers = 3\n")
    monkeypatch.setenv("CLOUDBUTTON_MAX_WORKERS", "none")
    assert resolve_config().max_workers is None


def test_toml_strings_are_converted_like_environment_text(layers):
    layers.cwd.write_text('max_workers = "3"\ntimeout = "1.5"\nshow_progressbar = "yes"\n')
    config = resolve_config()
    assert (config.max_workers, config.timeout, config.show_progressbar) == (3, 1.5, True)


@pytest.mark.parametrize(
    "key, text",
    [
        ("max_workers", "four"),
        ("max_workers", "4.0"),
        ("max_workers", "0"),
        ("max_workers", "-1"),
        ("chunksize", "0"),
        ("retries", "-1"),
        ("retries", "none"),
        ("retries", "many"),
        ("timeout", "soon"),
        ("timeout", "-1"),
        ("runtime_memory", "0"),
        ("show_progressbar", "maybe"),
        ("show_progressbar", "2"),
        ("backend", "nope"),
    ],
)
def test_bad_environment_text_names_the_variable(monkeypatch, key, text):
    monkeypatch.setenv(f"CLOUDBUTTON_{key.upper()}", text)
    with pytest.raises(ConfigError) as info:
        resolve_config()
    assert key in str(info.value)
    assert f"CLOUDBUTTON_{key.upper()}" in str(info.value)


# --- validation ----------------------------------------------------------------------------------


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError):
        resolve_config(max_workers=0)


@pytest.mark.parametrize(
    "key, value",
    [
        ("max_workers", 0),
        ("max_workers", -1),
        ("max_workers", 2.5),
        ("max_workers", True),
        ("max_workers", "four"),
        ("max_workers", [2]),
        ("chunksize", 0),
        ("chunksize", -7),
        ("timeout", 0),
        ("timeout", -0.5),
        ("timeout", "soon"),
        ("timeout", False),
        ("runtime_memory", 0),
        ("runtime_memory", -100),
        ("runtime_memory", 1.5),
        ("retries", -1),
        ("retries", 1.0),
        ("show_progressbar", 1),
        ("show_progressbar", "maybe"),
        ("backend", 3),
        ("backend", "nope"),
        ("dask_address", 8786),
    ],
)
def test_bad_keyword_values_raise_config_error_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key) as info:
        resolve_config(**{key: value})
    assert KWARG in str(info.value)


@pytest.mark.parametrize("key, value", [("retries", None), ("backend", None), ("max_workers", -1)])
def test_bad_config_mapping_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key) as info:
        resolve_config({key: value})
    assert CONFIG_ARG in str(info.value)


def test_bad_file_values_name_the_key_and_the_file(layers):
    layers.user.write_text("max_workers = true\n")
    with pytest.raises(ConfigError, match="max_workers") as info:
        resolve_config()
    assert str(layers.user) in str(info.value)
    layers.user.write_text("max_workers = 2.0\n")
    with pytest.raises(ConfigError, match="max_workers"):
        resolve_config()


def test_unknown_backend_lists_the_allowed_values():
    with pytest.raises(ConfigError) as info:
        resolve_config(backend="nope")
    message = str(info.value)
    assert "backend" in message and "'nope'" in message
    assert "dask" in message and "local" in message


def test_unknown_keyword_key_names_it_and_the_allowed_keys():
    with pytest.raises(ConfigError) as info:
        resolve_config(max_worker=2)
    message = str(info.value)
    assert "'max_worker'" in message and KWARG in message
    assert all(key in message for key in config_keys())


def test_unknown_config_mapping_key():
    with pytest.raises(ConfigError, match="'workers'") as info:
        resolve_config({"workers": 2})
    assert CONFIG_ARG in str(info.value)


@pytest.mark.parametrize("which", ["user", "cwd"])
def test_unknown_file_key_names_it_and_the_file(layers, which):
    path = getattr(layers, which)
    path.write_text("max_workers = 2\nbackend_name = 'local'\n")
    with pytest.raises(ConfigError, match="'backend_name'") as info:
        resolve_config()
    assert str(path) in str(info.value)


def test_a_table_in_a_file_is_an_unknown_key(layers):
    layers.cwd.write_text("[cloudbutton]\nmax_workers = 2\n")
    with pytest.raises(ConfigError, match="'cloudbutton'"):
        resolve_config()


def test_unknown_environment_variable_is_named(monkeypatch):
    monkeypatch.setenv("CLOUDBUTTON_MAX_WORKER", "2")
    with pytest.raises(ConfigError) as info:
        resolve_config()
    message = str(info.value)
    assert "max_worker'" in message and "CLOUDBUTTON_" in message


@pytest.mark.parametrize("which", ["user", "cwd"])
@pytest.mark.parametrize(
    "text", ["max_workers = \n", "max_workers = 2\nmax_workers = 3\n", "[[[\n", "timeout = 1.5.2\n"]
)
def test_malformed_toml_names_the_file(layers, which, text):
    path = getattr(layers, which)
    path.write_text(text)
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        resolve_config()
    assert str(path) in str(info.value)


def test_a_config_path_that_is_a_directory_is_a_config_error(layers):
    layers.cwd.mkdir()
    with pytest.raises(ConfigError) as info:
        resolve_config()
    assert str(layers.cwd) in str(info.value)


def test_a_file_that_is_not_utf8_is_a_config_error(layers):
    layers.cwd.write_bytes(b"max_workers = 2  # caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        resolve_config()
    assert str(layers.cwd) in str(info.value)


def test_an_unknown_keyword_key_is_refused_even_when_none():
    with pytest.raises(ConfigError, match="'timout'"):
        resolve_config(timout=None)


def test_an_empty_xdg_config_home_means_home_dot_config(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".config" / "cloudbutton").mkdir(parents=True)
    (home / ".config" / "cloudbutton" / "config.toml").write_text("retries = 4\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", "")
    assert resolve_config().retries == 4


def test_home_dot_config_is_used_without_xdg_config_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".config" / "cloudbutton").mkdir(parents=True)
    (home / ".config" / "cloudbutton" / "config.toml").write_text("retries = 4\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME")
    config = resolve_config()
    assert config.retries == 4
    assert config.sources["retries"] == str(home / ".config" / "cloudbutton" / "config.toml")


# --- the executor refuses bad config before starting anything ------------------------------------


def test_function_executor_unknown_backend():
    with pytest.raises(ConfigError) as info:
        FunctionExecutor(backend="nope")
    assert "nope" in str(info.value) and "dask" in str(info.value) and "local" in str(info.value)


@pytest.mark.parametrize("workers", [0, -1])
def test_function_executor_non_positive_workers(workers):
    with pytest.raises(ConfigError, match="max_workers"):
        FunctionExecutor(max_workers=workers)


def test_function_executor_unknown_key_and_bad_env(monkeypatch):
    with pytest.raises(ConfigError, match="'max_worker'"):
        FunctionExecutor(max_worker=2)
    with pytest.raises(ConfigError, match="'bogus'"):
        FunctionExecutor(config={"bogus": 1})
    monkeypatch.setenv("CLOUDBUTTON_BACKEND", "nope")
    with pytest.raises(ConfigError, match="CLOUDBUTTON_BACKEND"):
        FunctionExecutor()


def inc(x):
    return x + 1


@pytest.mark.parametrize(
    "override", [{"chunksize": 0}, {"retries": -1}, {"timeout": -1}, {"runtime_memory": 0}, {"timeout": "soon"}]
)
def test_bad_map_settings_are_refused_before_submitting(override):
    with FunctionExecutor(max_workers=2) as fexec:
        with pytest.raises(ConfigError, match=next(iter(override))):
            fexec.map(inc, [1, 2], **override)
        assert fexec.futures == []
        assert fexec.get_result(fexec.map(inc, [1, 2])) == [2, 3]


# --- the Config object ----------------------------------------------------------------------------


def test_config_is_frozen():
    config = resolve_config(max_workers=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_workers = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sources = {}
    assert config.max_workers == 2
    assert hash(config) == hash(resolve_config(max_workers=2))
