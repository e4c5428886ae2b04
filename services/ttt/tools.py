"""Tool calls as text: how tools and calls are written into prompts and read back from output.

Models without tools in their chat template get the tool definitions in the system message and
answer with Hermes-style blocks, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
the format most open chat templates with tools use. The llama.cpp engine's grammar enforces
that exact layout, and `textstream.ToolCallParser` reads it back.
"""

from __future__ import annotations

import json
import re
import uuid

from genmesh.ttt.engine import ChatMessage, ToolCall, ToolUse

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
# A call's text up to its arguments, with the whitespace a model may put in.
HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')


def call_prefix(name: str) -> str:
    """The text of a call up to its arguments, as the grammar writes it."""
    return f'{OPEN}{{"name": {json.dumps(name)}, "arguments": '


def call_text(call: ToolCall) -> str:
    return f"{call_prefix(call.name)}{call.arguments}}}{CLOSE}"


def instructions(use: ToolUse) -> str:
    """What a model without a tools template is told about the tools."""
    tools = [
        {"name": t.name, "description": t.description, "parameters": t.parameters}
        for t in use.allowed
    ]
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


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"
