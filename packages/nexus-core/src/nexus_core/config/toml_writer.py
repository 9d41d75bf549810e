"""A small TOML writer (the standard library only reads TOML): keys, strings and values as TOML
spells them, and whole documents for printing the effective configuration.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"'}


def toml_key(key: str) -> str:
    """A key as TOML spells it: bare when it can be, quoted otherwise."""
    return key if _BARE_KEY.match(key) else toml_string(key)


def toml_string(text: str) -> str:
    """A TOML basic string."""
    out = ['"']
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def toml_value(value: Any) -> str:
    """A value as inline TOML (strings, numbers, booleans, arrays, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, Mapping):
        items = ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items())
        return f"{{ {items} }}" if items else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if value is None:
        raise ValueError("TOML has no null: leave the key out instead")
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: Any) -> bool:
    return (
        isinstance(value, list) and bool(value) and all(isinstance(item, Mapping) for item in value)
    )


def to_toml(data: Mapping[str, Any]) -> str:
    """Write a mapping as a TOML document; ``None`` values are left out (TOML has no null)."""
    lines: list[str] = []
    _write_table(lines, (), data, array_item=False)
    return "\n".join(lines).strip("\n") + "\n"


def _write_table(
    lines: list[str], path: tuple[str, ...], table: Mapping[str, Any], *, array_item: bool
) -> None:
    scalars = [
        (key, value)
        for key, value in table.items()
        if value is not None and not _is_table(value) and not _is_table_array(value)
    ]
    if array_item:
        lines.extend(["", f"[[{'.'.join(toml_key(p) for p in path)}]]"])
    elif path and (scalars or not table):
        lines.extend(["", f"[{'.'.join(toml_key(p) for p in path)}]"])
    lines.extend(f"{toml_key(str(key))} = {toml_value(value)}" for key, value in scalars)
    for key, value in table.items():
        if _is_table(value):
            _write_table(lines, (*path, str(key)), value, array_item=False)
    for key, value in table.items():
        if _is_table_array(value):
            for item in value:
                _write_table(lines, (*path, str(key)), item, array_item=True)
