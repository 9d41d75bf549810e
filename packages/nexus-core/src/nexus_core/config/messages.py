"""Error text: a pydantic validation error as one line naming the key path, where the value came
from (the file, an environment variable, the command line) and what is wrong, with a "did you
mean" for a mistyped key and never a secret's value.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from nexus_core.config.errors import ConfigKeyError
from nexus_core.config.keys import field_shape, format_key_path
from nexus_core.config.masking import mask_url
from nexus_core.config.schema import NexusConfig


def _clean_loc(raw: tuple[int | str, ...]) -> tuple[tuple[str | int, ...], type[BaseModel] | None]:
    """Keep only the parts of a pydantic location that are real keys; also return the model
    that owns the last key (for "did you mean")."""
    loc: list[str | int] = []
    owner: type[BaseModel] | None = NexusConfig
    # What the next location part indexes into: a model, a list, a dict, or a plain value.
    shape, inner = "model", owner
    for part in raw:
        if shape == "model" and inner is not None and isinstance(part, str):
            loc.append(part)
            owner = inner
            field = inner.model_fields.get(part)
            if field is None:
                shape, inner = "value", None
            else:
                shape, inner = field_shape(field)
        elif (shape == "list" and isinstance(part, int)) or (
            shape == "dict" and isinstance(part, str)
        ):
            loc.append(part)
            shape = "model" if inner is not None else "value"
        elif shape == "value" and isinstance(part, (int, str)) and not _is_tag(part):
            loc.append(part)
    return tuple(loc), owner


def _is_tag(part: int | str) -> bool:
    """Pydantic's names for validator functions and union branches in a location."""
    return isinstance(part, str) and ("[" in part or part in ("int", "str", "float", "bool"))


_SECRET_WORDS = ("key", "token", "secret", "password")


def _unknown_key(loc: tuple[str | int, ...], owner: type[BaseModel] | None) -> str:
    key = str(loc[-1])
    if owner is None:
        return "unknown key"
    known = list(owner.model_fields)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    if any(word in key.lower() for word in _SECRET_WORDS) and not key.endswith("_env"):
        hint += (
            " (secrets are never read from the config file: put the value in an environment "
            "variable and name the variable in a *_env key)"
        )
    return f"unknown key{hint}"


def _message(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    simple = {
        "int_parsing": "must be an integer",
        "int_type": "must be an integer",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "list_type": "must be an array",
        "dict_type": "must be a table",
        "model_type": "must be a table",
        "model_attributes_type": "must be a table",
        "missing": "required key is missing",
        "finite_number": "must be a finite number",
    }
    if kind in simple:
        return simple[kind]
    bounds = {
        "greater_than_equal": ("ge", ">="),
        "greater_than": ("gt", ">"),
        "less_than_equal": ("le", "<="),
        "less_than": ("lt", "<"),
    }
    if kind in bounds:
        name, symbol = bounds[kind]
        return f"must be {symbol} {ctx.get(name)}"
    if kind == "enum":
        return f"must be {ctx.get('expected', '')} (any case)"
    if kind == "string_too_short":
        return "must not be empty"
    message = str(err["msg"])
    return message.removeprefix("Value error, ")


def _shown(value: Any) -> str:
    """A value for an error message, with any password in a URL masked."""
    if isinstance(value, str):
        return repr(mask_url(value))
    return repr(value)


def describe_error(
    err: Mapping[str, Any], source: str, origins: Mapping[tuple[str, ...], str]
) -> str:
    """One line for a pydantic error: ``<origin>: <key path>: <what is wrong> (got <value>)``."""
    loc, owner = _clean_loc(tuple(err["loc"]))
    kind = err["type"]
    original = (err.get("ctx") or {}).get("error")
    if isinstance(original, ConfigKeyError):
        loc = loc + original.key
    where = format_key_path(loc) or "(top level)"
    origin = origins.get(tuple(str(part) for part in loc), source)
    if kind == "extra_forbidden":
        return f"{origin}: {where}: {_unknown_key(loc, owner)}"
    message = _message(err)
    got = err.get("input")
    secret_field = bool(loc) and str(loc[-1]).endswith("_env")
    show_input = (
        kind not in ("value_error", "missing", "extra_forbidden")
        and not isinstance(got, (dict, list))
        and not secret_field
    )
    suffix = f" (got {_shown(got)})" if show_input else ""
    return f"{origin}: {where}: {message}{suffix}"
