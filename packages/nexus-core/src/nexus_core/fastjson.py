"""JSON on the request path: msgspec's speed with the standard library's behaviour.

msgspec's decoder parses a small request or answer about twice as fast as ``json`` (and keeps
integers of any size exact, unlike orjson, which turns those beyond 64 bits into floats). Where it
refuses input the standard library accepts (``NaN`` and ``Infinity``, numbers beyond a float's
range, UTF-16 bodies, lone surrogates), ``json`` decides, so what is accepted or rejected, and the
error raised (``ValueError``, or ``RecursionError`` for absurd nesting), stay the standard
library's. ``dumps`` writes compact UTF-8 JSON, as ``json.dumps(value, ensure_ascii=False,
separators=(",", ":")).encode()`` would, several times faster.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

_decode = msgspec.json.decode
_encode = msgspec.json.encode


def loads(data: bytes | str) -> Any:
    """Parse ``data`` exactly as ``json.loads`` would."""
    try:
        return _decode(data)
    except (msgspec.DecodeError, RecursionError):
        return json.loads(data)


def dumps(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON.

    A string UTF-8 cannot hold (a lone surrogate, which ``loads`` lets through from a
    ``\\ud800`` escape) is written with ``\\u`` escapes rather than refused.
    """
    try:
        return _encode(value)
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()
