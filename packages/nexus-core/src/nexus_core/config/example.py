"""The commented example ``nexus.toml`` of ``nexus config init``, generated from the models
(their defaults, descriptions and examples), so a new key shows up in it without anyone
remembering to add it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from nexus_core.config.keys import field_shape
from nexus_core.config.schema import NexusConfig
from nexus_core.config.toml_writer import toml_key, toml_value

WIDTH = 96

MINIMAL_KEYS = frozenset(
    {
        "server.host",
        "server.port",
        "discovery.enabled",
        "routing.strategy",
        "backends",
        "backends[].name",
        "backends[].url",
        "backends[].type",
        "logging.level",
    }
)

_FULL_HEADER = """\
# Nexus configuration, written by `nexus config init`.
#
# Every key is shown with its default value: change what you need, delete the rest.
# Commented-out keys are unset by default; remove the leading "# " to set them.
# Precedence: command-line flags > environment variables (NEXUS_*) > this file > defaults.
# Secrets never go in this file: keys ending in _env hold the NAME of an environment variable.
# Check it with `nexus config check FILE`. Reference: docs/configuration.md"""

_MINIMAL_HEADER = """\
# Nexus configuration (minimal), written by `nexus config init --minimal`.
#
# Everything not set here has a default: with no backends listed, Nexus finds servers on the
# local network (mDNS) and picks up a local Ollama. `nexus config init` without --minimal
# writes every key with its default and a comment. Reference: docs/configuration.md"""


def example_config(minimal: bool = False, *, include_examples: bool = False) -> str:
    """A commented example ``nexus.toml`` that validates.

    The full example has every section and key with its default and a comment; keys without a
    default and example tables (backends, policies, prices, ...) are commented out, unless
    ``include_examples`` writes them active (used to prove the examples are valid).
    """
    writer = _ExampleWriter(minimal=minimal, active_examples=include_examples)
    lines = [_MINIMAL_HEADER if minimal else _FULL_HEADER]
    for name, field in NexusConfig.model_fields.items():
        writer.write_field(lines, (name,), name, field, default_owner=NexusConfig())
    return "\n".join(lines).rstrip("\n") + "\n"


class _ExampleWriter:
    def __init__(self, *, minimal: bool, active_examples: bool) -> None:
        self.minimal = minimal
        self.active_examples = active_examples

    def wanted(self, key_path: str) -> bool:
        if not self.minimal:
            return True
        return any(k == key_path or k.startswith(key_path + ".") for k in MINIMAL_KEYS)

    def example_prefix(self) -> str:
        return "" if self.active_examples else "# "

    def write_field(
        self,
        lines: list[str],
        path: tuple[str, ...],
        key_path: str,
        field: FieldInfo,
        *,
        default_owner: BaseModel,
    ) -> None:
        """Write a top-level section or a nested table (scalars are written by write_table)."""
        if not self.wanted(key_path):
            return
        shape, inner = field_shape(field)
        if shape == "model" and inner is not None:
            self.write_table(lines, path, key_path, inner, getattr(default_owner, path[-1]), field)
        elif shape == "list" and inner is not None:
            self.write_example_items(lines, path, key_path, inner, field, array=True)
        elif shape == "dict" and inner is not None:
            self.write_example_items(lines, path, key_path, inner, field, array=False)
        elif shape == "dict":
            self.write_example_mapping(lines, path, field)

    def write_table(
        self,
        lines: list[str],
        path: tuple[str, ...],
        key_path: str,
        model: type[BaseModel],
        defaults: BaseModel,
        field: FieldInfo,
    ) -> None:
        lines.append("")
        lines.extend(_comment(field.description))
        lines.append(f"[{_header(path)}]")
        nested: list[tuple[str, FieldInfo]] = []
        for name, child in model.model_fields.items():
            child_path = f"{key_path}.{name}"
            if not self.wanted(child_path):
                continue
            shape, inner = field_shape(child)
            if shape in ("model", "dict") or (shape == "list" and inner is not None):
                nested.append((name, child))
                continue
            lines.extend(_comment(child.description))
            default = getattr(defaults, name)
            if default is None:
                example = toml_value(_example(child))
                lines.append(f"{self.example_prefix()}{toml_key(name)} = {example}")
            else:
                lines.append(f"{toml_key(name)} = {toml_value(_plain(default))}")
        for name, child in nested:
            self.write_field(
                lines, (*path, name), f"{key_path}.{name}", child, default_owner=defaults
            )

    def write_example_mapping(
        self, lines: list[str], path: tuple[str, ...], field: FieldInfo
    ) -> None:
        """A table of user-named scalar entries (aliases): header active, entries as examples."""
        lines.append("")
        lines.extend(_comment(field.description))
        lines.append(f"[{_header(path)}]")
        for key, value in _example(field).items():
            lines.append(f"{self.example_prefix()}{toml_key(key)} = {toml_value(value)}")

    def write_example_items(
        self,
        lines: list[str],
        path: tuple[str, ...],
        key_path: str,
        model: type[BaseModel],
        field: FieldInfo,
        *,
        array: bool,
    ) -> None:
        """An example ``[[array]]`` item, or ``[table."<name>"]`` entry, of a model."""
        prefix = self.example_prefix()
        lines.append("")
        lines.extend(_comment(field.description))
        items: list[tuple[str, Mapping[str, Any] | None, str]]
        if array:
            items = [(f"[[{_header(path)}]]", None, f"{key_path}[]")]
        else:
            items = [
                (f"[{_header((*path, name))}]", values, f"{key_path}.<name>")
                for name, values in _example(field).items()
            ]
        for header, values, item_path in items:
            lines.append(f"{prefix}{header}")
            nested: list[tuple[str, type[BaseModel], FieldInfo]] = []
            for name, child in model.model_fields.items():
                if array and not self.wanted(f"{item_path}.{name}"):
                    continue
                shape, inner = field_shape(child)
                if array and shape == "list" and inner is not None:
                    nested.append((name, inner, child))  # written as [[path.name]] below
                    continue
                value = values[name] if values is not None and name in values else _example(child)
                lines.extend(_comment(child.description))
                lines.append(f"{prefix}{toml_key(name)} = {toml_value(value)}")
            for name, inner, child in nested:
                self.write_example_items(
                    lines, (*path, name), f"{item_path}.{name}", inner, child, array=True
                )


def _header(path: tuple[str, ...]) -> str:
    return ".".join(toml_key(part) for part in path)


def _comment(text: str | None) -> list[str]:
    if not text:
        return []
    return [f"# {line}" for line in textwrap.wrap(text, WIDTH - 2)]


def _plain(value: Any) -> Any:
    """Enums as their strings, lists element-wise: what TOML can hold."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, str):
        return str.__str__(value)
    return value


def _example(field: FieldInfo) -> Any:
    """The field's first example, else its default (every key must have one or the other)."""
    if field.examples:
        return _plain(field.examples[0])
    default = field.get_default(call_default_factory=True)
    if default is None:
        raise ValueError(f"config field needs a default or an example: {field}")
    return _plain(default)
