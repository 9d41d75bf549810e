"""Key paths of the configuration: how the models nest (``field_shape``), every key path
(``config_key_paths``, checked against docs/configuration.md) and a path as text
(``format_key_path``). Used by the error messages, the example file and the docs check.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from nexus_core.config.schema import NexusConfig
from nexus_core.config.toml_writer import toml_key


def _unwrap_optional(annotation: Any) -> Any:
    """``X | None`` -> ``X``; ``Annotated[X, ...]`` -> ``X``; anything else unchanged."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
            continue
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if origin is not None and type(None) in get_args(annotation) and len(args) == 1:
            annotation = args[0]
            continue
        return annotation


def _as_model(annotation: Any) -> type[BaseModel] | None:
    annotation = _unwrap_optional(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def field_shape(field: FieldInfo) -> tuple[str, type[BaseModel] | None]:
    """How a field nests: ``("model"|"list"|"dict"|"value", item model or None)``."""
    annotation = _unwrap_optional(field.annotation)
    model = _as_model(annotation)
    if model is not None:
        return "model", model
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is list and args:
        return "list", _as_model(args[0])
    if origin is dict and len(args) == 2:
        return "dict", _as_model(args[1])
    return "value", None


def dict_key_name(field: FieldInfo) -> str:
    """The placeholder for the keys of a dict field (``model`` in ``pricing.<model>``)."""
    extra = field.json_schema_extra
    name = extra.get("key_name") if isinstance(extra, dict) else None
    return str(name) if name else "name"


def config_key_paths(model: type[BaseModel] = NexusConfig, prefix: str = "") -> Iterator[str]:
    """Every key path of the configuration, e.g. ``backends[].api_key_env``.

    Lists of tables add ``[]`` and tables keyed by user names add a placeholder such as
    ``logging.component_levels.<component>``.
    """
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        yield path
        shape, inner = field_shape(field)
        if inner is None:
            continue
        if shape == "list":
            yield from config_key_paths(inner, f"{path}[]")
        elif shape == "dict":
            yield from config_key_paths(inner, f"{path}.<{dict_key_name(field)}>")
        else:
            yield from config_key_paths(inner, path)


def format_key_path(loc: tuple[str | int, ...]) -> str:
    """``("backends", 2, "zone")`` -> ``backends[2].zone``; odd keys are quoted as in TOML."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{toml_key(part)}" if out else toml_key(part)
    return out
