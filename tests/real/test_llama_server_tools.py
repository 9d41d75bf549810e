"""The Responses door's function tools and structured output against a real ``llama-server``.

The model is random, so nothing it says is chosen; what makes these answers real is llama-server's
own grammar: for ``tool_choice: "required"`` and for a ``json_schema`` response format it lets the
model write only what the schema allows, then parses the result into ``tool_calls`` or content.
Two start options make that work with the tiny model (see ``tools_chat_template.jinja``):

- a chat template that knows tools (the tiny model's own does not, and llama-server then ignores
  ``tools`` altogether), writing a call as a bare JSON object;
- a strong logit bias for the token ``{``: the grammar lets a call (or any text) start the answer,
  and a random model would write text for ever; inside the grammar the bias changes nothing else,
  since ``{`` is allowed nowhere after the call has begun.

llama-server reads ``tool_choice`` only as a string: the named form (``{"type": "function", ...}``)
is taken as ``"auto"`` (its log: "Wrong type supplied for parameter 'tool_choice'"), which puts no
grammar on a call without a start marker, so these tests force the call with ``"required"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest
from openai.types.responses import Response
from pydantic import BaseModel

from nexus_server.testing import running_server
from tests.real.llama_server import ALIAS, LaunchLlama, LlamaServer
from tests.real.test_llama_server import nexus_config, sdk
from tests.real.tiny_model import token_id

pytestmark = pytest.mark.slow

TEMPLATE = Path(__file__).with_name("tools_chat_template.jinja")
CITIES = ("Paris", "Rome")
WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": list(CITIES)}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
QUESTION: Any = {"role": "user", "content": "What is the weather in Paris?"}
# Room for the grammar's optional whitespace; a call is about 40 tokens.
ROOM = 200


class Weather(BaseModel):
    """What ``responses.parse`` asks for: nothing a random model could spell out freely."""

    city: Literal["Paris", "Rome"]
    sunny: bool


@pytest.fixture
def structured(launch_llama: LaunchLlama, tiny_model: Path) -> LlamaServer:
    """A llama-server that knows tools and opens every answer with ``{`` when it may."""
    brace = token_id(tiny_model, "{")
    return launch_llama(
        "tools",
        *("--jinja", "--chat-template-file", str(TEMPLATE)),
        *("--logit-bias", f"{brace}+100"),
    )


def test_parse_gets_the_schemas_object(structured: LlamaServer) -> None:
    with running_server(nexus_config(structured)) as nexus:
        response = sdk(nexus).responses.parse(
            model=ALIAS, input=[QUESTION], text_format=Weather, max_output_tokens=ROOM
        )
    assert response.status == "completed"
    parsed = response.output_parsed
    assert isinstance(parsed, Weather)
    assert parsed.city in CITIES
    # The text is the object itself (whitespace aside), not prose around it.
    assert Weather.model_validate_json(response.output_text) == parsed


def test_forced_function_call_and_its_output_round_trip(structured: LlamaServer) -> None:
    with running_server(nexus_config(structured)) as nexus:
        client = sdk(nexus)
        first = client.responses.create(
            model=ALIAS,
            input=[QUESTION],
            tools=[WEATHER_TOOL],
            tool_choice="required",
            parallel_tool_calls=False,
            max_output_tokens=ROOM,
        )
        calls = [item for item in first.output if item.type == "function_call"]
        assert first.status == "completed"
        assert len(calls) == 1
        call = calls[0]
        assert call.name == "get_weather"
        assert json.loads(call.arguments)["city"] in CITIES
        assert call.call_id  # llama-server's own id, handed back below

        def hand_back(output: str) -> Response:
            # The call and its output go back as the SDK's docs show; the real template renders
            # both into the prompt.
            return client.responses.create(
                model=ALIAS,
                input=[
                    QUESTION,
                    *[item.model_dump(exclude_none=True) for item in first.output],
                    {"type": "function_call_output", "call_id": call.call_id, "output": output},
                ],
                tools=[WEATHER_TOOL],
                tool_choice="none",
                max_output_tokens=4,
            )

        short = hand_back("18C")
        long = hand_back("18C, sunny, a light wind from the west and no rain until tomorrow")
    assert [item.type for item in short.output] == ["message"]
    assert short.output_text
    assert first.usage is not None
    assert short.usage is not None
    assert long.usage is not None
    # The call and its output reached the prompt: it grew with the call, and with the output.
    assert short.usage.input_tokens > first.usage.input_tokens
    assert long.usage.input_tokens > short.usage.input_tokens


def test_streamed_forced_function_call(structured: LlamaServer) -> None:
    with (
        running_server(nexus_config(structured)) as nexus,
        sdk(nexus).responses.stream(
            model=ALIAS,
            input=[QUESTION],
            tools=[WEATHER_TOOL],
            tool_choice="required",
            parallel_tool_calls=False,
            max_output_tokens=ROOM,
        ) as stream,
    ):
        events = list(stream)
        final = stream.get_final_response()
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert "response.function_call_arguments.done" in types
    deltas = "".join(
        event.delta  # type: ignore[union-attr]
        for event in events
        if event.type == "response.function_call_arguments.delta"
    )
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert call.arguments == deltas
    assert json.loads(deltas)["city"] in CITIES
