"""JSON parsing on the request path: msgspec's speed with the standard library's behaviour.

msgspec's decoder parses a small request or answer about twice as fast as ``json`` (and keeps
integers of any size exact, unlike orjson, which turns those beyond 64 bits into floats). Where it
refuses input the standard library accepts (``NaN`` and ``Infinity``, numbers beyond a float's
range, UTF-16 bodies, lone surrogates), ``json`` decides, so what is accepted or rejected, and the
error raised (``ValueError``, or ``RecursionError`` for absurd nesting), stay the standard
library's.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

_decode = msgspec.json.decode


def loads(data: bytes | str) -> Any:
    """Parse ``data`` exactly as ``json.loads`` would."""
    try:
        return _decode(data)
    except (msgspec.DecodeError, RecursionError):
        return json.loads(data)
