"""Edits of a request's raw JSON body on its way to a backend, keeping every other byte."""

from __future__ import annotations

import json

__all__ = ["replace_model", "with_include_usage"]


def replace_model(body: bytes, model: str) -> bytes:
    """The body with only the top-level ``model`` value replaced; every other byte is kept."""
    text = body.decode("utf-8")
    decoder = json.JSONDecoder()
    scan = json.decoder.scanstring  # type: ignore[attr-defined]
    index = _skip_ws(text, 0)
    if text[index : index + 1] != "{":
        raise ValueError("not a JSON object")
    index = _skip_ws(text, index + 1)
    while index < len(text) and text[index] == '"':
        key, index = scan(text, index + 1)
        index = _skip_ws(text, index)
        index = _skip_ws(text, index + 1)  # past ':'
        _, end = decoder.raw_decode(text, index)
        if key == "model":
            replacement = json.dumps(model, ensure_ascii=False)
            return (text[:index] + replacement + text[end:]).encode("utf-8")
        index = _skip_ws(text, end)
        if text[index : index + 1] == ",":
            index = _skip_ws(text, index + 1)
    raise ValueError("no top-level model key")


def with_include_usage(body: bytes) -> bytes:
    """The body asking for ``stream_options.include_usage`` (to price a stream from its usage).

    Without a top-level ``stream_options`` the member is inserted and every other byte kept;
    otherwise the body is re-encoded with ``include_usage`` set in the existing options.
    """
    if b'"stream_options"' not in body:
        start = body.index(b"{") + 1
        return body[:start] + b'"stream_options":{"include_usage":true},' + body[start:]
    data = json.loads(body)
    options = data.get("stream_options")
    data["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _skip_ws(text: str, index: int) -> int:
    length = len(text)
    while index < length and text[index] in " \t\r\n":
        index += 1
    return index
