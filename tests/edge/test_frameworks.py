"""The OpenAI clients of two frameworks against the edge, unchanged: langchain-openai's
`ChatOpenAI` (invoke, stream, structured output, tools) and litellm (`openai/<model>` with an
`api_base`). litellm reads its model price list from the internet at import unless told to use
the copy it ships; the tests run offline."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Annotated, Any

import jsonschema
import pytest
from pydantic import BaseModel, Field

from tests.support import API_KEY, ServiceProcess

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
langchain_openai = pytest.importorskip("langchain_openai")
litellm = pytest.importorskip("litellm")

HELLO = "hello mesh"


class Person(BaseModel):
    """A person."""

    name: Annotated[str, Field(max_length=12)]
    age: int


class GetWeather(BaseModel):
    """The current weather in a city."""

    city: Annotated[str, Field(max_length=20)]


def chat_model(edge: ServiceProcess, model: str, **options: Any) -> Any:
    return langchain_openai.ChatOpenAI(
        model=model,
        base_url=f"http://{edge.address}/v1",
        api_key=API_KEY,
        max_retries=0,
        **options,
    )


@pytest.fixture(scope="module")
def smol_chat(smol_edge: ServiceProcess) -> Iterator[Any]:
    yield chat_model(smol_edge, "smollm2", max_tokens=80, seed=7, timeout=300)


def test_langchain_invoke_and_stream(edge: ServiceProcess) -> None:
    chat = chat_model(edge, "echo")
    assert chat.invoke(HELLO).content == HELLO
    chunks = list(chat.stream(HELLO))
    assert "".join(str(chunk.content) for chunk in chunks) == HELLO


def test_langchain_structured_output(smol_chat: Any) -> None:
    person = smol_chat.with_structured_output(Person).invoke("Describe a person.")
    assert isinstance(person, Person)
    assert len(person.name) <= 12


def test_langchain_bind_tools(smol_chat: Any) -> None:
    tooled = smol_chat.bind_tools([GetWeather], tool_choice="GetWeather")
    message = tooled.invoke("What is the weather in Paris?")
    (call,) = message.tool_calls
    assert call["name"] == "GetWeather" and call["id"]
    jsonschema.validate(call["args"], GetWeather.model_json_schema())


def test_litellm_completion_and_stream(edge: ServiceProcess) -> None:
    options: dict[str, Any] = {
        "model": "openai/echo",
        "api_base": f"http://{edge.address}/v1",
        "api_key": API_KEY,
        "messages": [{"role": "user", "content": HELLO}],
    }
    response = litellm.completion(**options)
    assert response.choices[0].message.content == HELLO
    assert response.usage.completion_tokens == len(HELLO)
    streamed = "".join(
        chunk.choices[0].delta.content or "" for chunk in litellm.completion(stream=True, **options)
    )
    assert streamed == HELLO
    arguments = json.dumps({"city": "Paris"})
    call = f'<tool_call>{{"name": "get_weather", "arguments": {arguments}}}</tool_call>'
    tools = [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object"}},
        }
    ]
    called = litellm.completion(
        **{**options, "messages": [{"role": "user", "content": call}]}, tools=tools
    )
    (made,) = called.choices[0].message.tool_calls
    assert made.function.name == "get_weather"
    assert json.loads(made.function.arguments) == {"city": "Paris"}
