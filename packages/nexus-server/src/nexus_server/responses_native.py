"""The Responses door's pass-through: a backend that speaks OpenAI's Responses API natively is
sent the client's request as it is, and its answer relayed unchanged.

What Nexus changes in the request (``native_request``): ``model`` (per attempt, the route's, as
on every door), ``store`` is ``false`` (the conversation is Nexus's to keep, in its own store;
the upstream keeps nothing), and ``previous_response_id`` is replaced by the stored conversation
it names, expanded into ``input``. ``NativeStream`` watches a relayed event stream without parsing
each event: the final response (for the store and ``on_complete``), and an end that is not one
(Nexus then adds its own ``error`` and ``response.failed`` events).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from nexus_core import fastjson
from nexus_core.adapters import Endpoint, speaks_responses
from nexus_core.anthropic_format import JSONDict
from nexus_core.errors import GatewayError
from nexus_core.failover import NativeRequest
from nexus_core.registry import Backend
from nexus_core.sse import event_data
from nexus_server.proxy import StreamBroke
from nexus_server.responses_wire import input_items

__all__ = ["NativeStream", "native_request", "speaks_natively"]

#: The events that end a Responses stream; the first two carry the final response.
_FINAL = (b'"response.completed"', b'"response.incomplete"')
_FAILED = b'"response.failed"'
_SEQUENCE = re.compile(rb'"sequence_number"\s*:\s*(\d+)')


def speaks_natively(backend: Backend) -> bool:
    """Whether ``backend`` is sent Responses requests as they are: its ``native_responses``
    setting, else what its adapter declares (``speaks_responses``)."""
    override = backend.config.native_responses
    return speaks_responses(backend.adapter) if override is None else override


def native_request(
    data: Mapping[str, Any], earlier: list[JSONDict] | None, refusal: GatewayError | None = None
) -> NativeRequest:
    """The request a native backend is sent: the client's, with ``store: false`` and the stored
    conversation (``earlier``) in place of ``previous_response_id``. ``refusal``: why it cannot
    be translated (only native backends may then serve it)."""
    body: JSONDict = {key: value for key, value in data.items() if key != "previous_response_id"}
    body["store"] = False
    if earlier:
        body["input"] = [*(item for item in earlier if _replayable(item)), *input_items(data)]
    return NativeRequest(Endpoint.RESPONSES, body, speaks_natively, refusal)


def _replayable(item: JSONDict) -> bool:
    """A reasoning item is sent back only with its ``encrypted_content``: without it (another
    model's reasoning, or OpenAI's own with nothing stored upstream) OpenAI refuses it, and it
    means nothing to the model."""
    return item.get("type") != "reasoning" or bool(item.get("encrypted_content"))


class NativeStream:
    """Follows a relayed Responses event stream with a few byte checks per event.

    ``feed`` each event before it is sent: it returns the final response when the event is
    ``response.completed`` or ``response.incomplete`` (so it can be stored before the client
    hears the answer is complete), and raises ``StreamBroke`` for Nexus's own error event (the
    upstream broke). ``ended`` tells a stream that finished (or failed upstream) from a cut one;
    ``error`` gives the events that end a cut one.
    """

    __slots__ = ("_last", "_shell", "ended", "model", "response")

    def __init__(self, model: str) -> None:
        #: The model of the answer, for a ``response.failed`` when no event named it.
        self.model = model
        #: The final response object, once ``response.completed``/``incomplete`` came.
        self.response: JSONDict | None = None
        #: The stream reached a final event (completed, incomplete or failed).
        self.ended = False
        self._shell: JSONDict | None = None
        self._last = b""

    def feed(self, event: bytes) -> JSONDict | None:
        """Note one upstream event; the final response if it is the final event."""
        if event.startswith(b'data: {"error"'):
            # Nexus's error event (``ProxyStream``): the upstream broke after the start.
            raise StreamBroke(_error_message(event))
        self._last = event
        if self._shell is None:
            # The first event (response.created) holds the response as it started.
            self._shell = self._response_of(event, None) or {}
        if b'"response.' not in event:
            return None
        if any(name in event for name in _FINAL):
            response = self._response_of(event, ("response.completed", "response.incomplete"))
            if response is not None:
                self.ended = True
                self.response = response
                return response
        elif _FAILED in event and self._response_of(event, ("response.failed",)) is not None:
            self.ended = True
        return None

    @staticmethod
    def _response_of(event: bytes, types: tuple[str, ...] | None) -> JSONDict | None:
        try:
            payload = fastjson.loads(event_data(event))
        except ValueError:
            return None
        if not isinstance(payload, dict) or (
            types is not None and payload.get("type") not in types
        ):
            return None
        response = payload.get("response")
        return response if isinstance(response, dict) else None

    def error(self, message: str, code: str = "server_error") -> bytes:
        """An ``error`` event and ``response.failed``, numbered after the last upstream event."""
        found = _SEQUENCE.findall(self._last)
        number = int(found[-1]) + 1 if found else 0
        response: JSONDict = {
            "id": f"resp_{uuid.uuid4().hex}",
            "object": "response",
            "created_at": int(time.time()),
            "model": self.model,
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            **(self._shell or {}),
        }
        response["status"] = "failed"
        response["error"] = {"code": "server_error", "message": message}
        error = {
            "type": "error",
            "sequence_number": number,
            "code": code,
            "message": message,
            "param": None,
        }
        failed = {"type": "response.failed", "sequence_number": number + 1, "response": response}
        return _sse(error) + _sse(failed)


def _sse(event: JSONDict) -> bytes:
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


def _error_message(event: bytes) -> str:
    try:
        payload = fastjson.loads(event_data(event))
    except ValueError:
        return "the upstream stream broke"
    error = payload.get("error") if isinstance(payload, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return str(message or "the upstream stream broke")
