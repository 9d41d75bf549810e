"""The config and state packages: public names, older import paths kept, the deprecated module."""

from __future__ import annotations

import importlib
import warnings

import pytest

import nexus_core.config
import nexus_core.state

# Names the project imported from the single modules before they became packages, outside
# ``__all__``: each must still be importable from the package, as the very object of its new home.
KEPT = {
    "nexus_core.config": {
        "LEGACY_SQLITE_PATH": "nexus_core.config.schema",
        "UPSTREAM_KEYS": "nexus_core.config.rust_nexus",
        "read_upstream_keys": "nexus_core.config.rust_nexus",
        "config_key_paths": "nexus_core.config.keys",
        "field_shape": "nexus_core.config.keys",
    },
    "nexus_core.state": {
        "REDIS_TIMEOUT_SECONDS": "nexus_core.state.redis",
        "claim_legacy": "nexus_core.state.location",
        "describe_state": "nexus_core.state.location",
        "is_default_path": "nexus_core.state.location",
        "sqlite_path": "nexus_core.state.location",
        "store_location": "nexus_core.state.location",
    },
}


@pytest.mark.parametrize("package", [nexus_core.config, nexus_core.state])
def test_every_public_name_is_defined_in_a_module_of_the_package(package: object) -> None:
    names = package.__all__  # type: ignore[attr-defined]
    for name in names:
        value = getattr(package, name)
        home = getattr(value, "__module__", None)
        if home is not None and isinstance(value, type):
            assert home.startswith(package.__name__ + "."), (name, home)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("package", "name", "home"),
    [(package, name, home) for package, names in KEPT.items() for name, home in names.items()],
)
def test_older_import_paths_give_the_object_of_its_new_home(
    package: str, name: str, home: str
) -> None:
    old = getattr(importlib.import_module(package), name)
    assert old is getattr(importlib.import_module(home), name)
    assert name not in importlib.import_module(package).__all__  # importable, not public


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("example_config", "nexus_core.config.example"),
        ("to_toml", "nexus_core.config.toml_writer"),
        ("toml_value", "nexus_core.config.toml_writer"),
    ],
)
def test_config_template_still_answers_with_a_deprecation_warning(name: str, home: str) -> None:
    module = importlib.import_module("nexus_core.config_template")
    with pytest.warns(DeprecationWarning, match=f"import it from {home}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(home), name)


def test_config_template_knows_no_other_name() -> None:
    module = importlib.import_module("nexus_core.config_template")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="no attribute 'NexusConfig'"):
            module.NexusConfig  # noqa: B018


def test_the_port_default_is_one_constant() -> None:
    # ``open_store`` and ``describe_state`` name a port-less instance's file by it.
    from nexus_core.config.schema import DEFAULT_PORT
    from nexus_core.state.location import open_store

    assert nexus_core.config.ServerConfig().port == DEFAULT_PORT
    assert open_store.__kwdefaults__ is not None
    assert open_store.__kwdefaults__["port"] == DEFAULT_PORT
