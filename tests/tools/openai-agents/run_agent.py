"""One openai-agents run with one function tool, through the SDK's default model class.

Run with this folder's environment's Python by ``tests/tools_ns/test_agents.py``:
``python run_agent.py BASE_URL MODEL``. The SDK's default client is pointed at ``BASE_URL`` and
its default API is left as it is (the Responses API), so the agent's model is the SDK's
``OpenAIResponsesModel``. Tracing is off: it would export to OpenAI. Prints one JSON line: the
final output and the cities the tool was called with.
"""

from __future__ import annotations

import asyncio
import json
import sys

from agents import (
    Agent,
    Runner,
    function_tool,
    set_default_openai_client,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

CALLS: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    CALLS.append(city)
    return f"Sunny and 21 degrees in {city}"


async def main(base_url: str, model: str) -> None:
    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=base_url, api_key="sk-agents", max_retries=0)
    set_default_openai_client(client, use_for_tracing=False)
    agent = Agent(
        name="weather",
        instructions="Use the tool to answer questions about the weather.",
        tools=[get_weather],
        model=model,
    )
    result = await Runner.run(agent, "What is the weather in Paris?")
    print(json.dumps({"final": result.final_output, "calls": CALLS}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
