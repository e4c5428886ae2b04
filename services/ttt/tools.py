"""Tool calls: how tools, calls and results go into prompts, and calls are read back from output.

Models answer with Hermes-style blocks, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
the format most open chat templates with tools use; the grammars (`grammar`, `guidance`) enforce
that exact layout, and `textstream.ToolCallParser` reads it back. A chat template that asks for
these blocks itself (`writes_tool_calls`) gets the tool definitions, calls and results as data,
in the OpenAI message shape such templates read; any other template gets them as text
(`plain_messages`).
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from typing import Any

import jinja2
import jinja2.meta

from genmesh.ttt import templates
from genmesh.ttt.engine import ChatMessage, Tool, ToolCall, ToolUse

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
# A call's text up to its arguments, with the whitespace a model may put in.
HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')


def call_prefix(name: str) -> str:
    """The text of a call up to its arguments, as the grammar writes it."""
    return f'{OPEN}{{"name": {json.dumps(name)}, "arguments": '


def call_text(call: ToolCall) -> str:
    return f"{call_prefix(call.name)}{call.arguments}}}{CLOSE}"


def definition(tool: Tool) -> dict[str, Any]:
    """A tool as OpenAI's function definition (what templates' `tools` entries hold)."""
    return {"name": tool.name, "description": tool.description, "parameters": tool.parameters}


def instructions(use: ToolUse) -> str:
    """What a model without a tools template is told about the tools."""
    tools = [definition(t) for t in use.allowed]
    must = "You must call a function." if use.required else "Call a function only if it helps."
    return (
        "You may call functions. Their JSON schemas:\n"
        + "\n".join(json.dumps(t) for t in tools)
        + f"\n{must} To call one, answer with "
        + f'{OPEN}{{"name": <function-name>, "arguments": <arguments-object>}}{CLOSE}'
    )


def plain_messages(messages: list[ChatMessage], use: ToolUse | None) -> list[ChatMessage]:
    """`messages` for a chat template that knows nothing of tools: the tools described in the
    system message, calls written as blocks, and results as user turns."""
    out: list[ChatMessage] = []
    for message in messages:
        if message.role == "tool":
            response = f"<tool_response>\n{message.content}\n</tool_response>"
            out.append(ChatMessage("user", response))
        elif message.tool_calls:
            calls = "\n".join(call_text(c) for c in message.tool_calls)
            out.append(ChatMessage("assistant", "\n".join(filter(None, [message.content, calls]))))
        else:
            out.append(message)
    if use is None:
        return out
    if out and out[0].role == "system":
        return [ChatMessage("system", f"{out[0].content}\n\n{instructions(use)}"), *out[1:]]
    return [ChatMessage("system", instructions(use)), *out]


@functools.cache
def writes_tool_calls(template: str) -> bool:
    """Whether the chat template describes tools itself in the layout the grammars force: it reads
    the `tools` variable (found in its syntax tree, not its text, where the word may be prose) and
    contains `<tool_call>`, the blocks it asks for and writes calls back as. A template that reads
    `tools` but teaches another layout (bare JSON with "parameters", `[TOOL_CALLS]`, ...) would
    contradict the grammar, so it keeps the tools-as-text path, as does one that does not parse.
    """
    if OPEN not in template:
        return False
    try:
        return "tools" in jinja2.meta.find_undeclared_variables(templates.parse(template))
    except jinja2.TemplateSyntaxError:
        return False


def conversation(
    messages: list[ChatMessage], use: ToolUse | None, template: str
) -> list[ChatMessage]:
    """The messages an engine rendering with `template` gets: unchanged when the template writes
    tools itself (`template_inputs` hands it the rest), else with tools and calls as text.

    No "you must call a function" is added for a required or named choice: the grammar opens
    the call at the first token anyway, and the template's own wording is what the model learnt
    (llama.cpp's server and vLLM also leave it as it is and rely on constrained decoding)."""
    if writes_tool_calls(template):
        return messages
    return plain_messages(messages, use)


def _arguments(text: str) -> Any:
    """A call's arguments as the object templates expect (they write it with `tojson`); text that
    is no JSON object is passed on as it came."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def template_inputs(
    messages: list[ChatMessage], use: ToolUse | None, template: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The `messages` and `tools` variables of `template`, in the OpenAI shape templates with
    tools read: assistant `tool_calls` of {"id", "type": "function", "function": {"name",
    "arguments"}} with arguments as an object, and tool results as "tool" messages naming their
    call (and its function, which some templates print). Tool definitions go only to a template
    that writes them itself (`conversation` made the messages plain for the others)."""
    names = {c.id: c.name for m in messages for c in m.tool_calls}
    out: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": _arguments(c.arguments)},
                }
                for c in message.tool_calls
            ]
        if message.role == "tool":
            item["tool_call_id"] = message.tool_call_id
            if message.tool_call_id in names:
                item["name"] = names[message.tool_call_id]
        out.append(item)
    if use is None or not writes_tool_calls(template):
        return out, None
    return out, [{"type": "function", "function": definition(t)} for t in use.allowed]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"
