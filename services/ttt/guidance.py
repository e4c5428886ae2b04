"""Constraints and tool calls as llguidance grammars, for the engines that decode with llguidance:
onnxruntime-genai through its built-in guidance (a Lark grammar), transformers through a logits
processor that masks what the grammar does not allow next (`allowed`).

JSON schemas become llguidance's `%json` rules, regular expressions its Rust-syntax regexes (with
Python's Unicode classes), GBNF its Lark (by llguidance's own converter), choices and tool calls
are written here in the layout `tools.HEADER` reads. What llguidance refuses is named by its field
(`ConstraintError`): a GBNF grammar it cannot read, or any constraint that no text the model can
write begins, is INVALID_ARGUMENT; a schema or regex (already checked valid by `structured`) that
llguidance cannot enforce, such as a backreference, is FAILED_PRECONDITION, as on llama.cpp. The
service still checks each output against the request (`structured.unsatisfied`, `call_check`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import llguidance
import numpy as np
from llguidance.gbnf_to_lark import any_to_lark

from genmesh.ttt import tools
from genmesh.ttt.engine import Constraint, ConstraintError, SamplingParams, ToolUse

# JSON written compactly, as `tools.call_prefix` writes calls: with free whitespace a tiny model
# can fill its whole budget with blank lines.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY = "(?s:.)"


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _json(schema: dict[str, Any]) -> str:
    # The layout options override any the request's schema carries (its "lenient" above all,
    # which would let keywords go unenforced).
    return "%json " + json.dumps({**schema, "x-guidance": JSON_OPTIONS})


def constraint_lark(constraint: Constraint) -> str:
    if constraint.json_schema is not None:
        return "start: " + _json(constraint.json_schema)
    if constraint.regex is not None:
        return f"start: /{llguidance.regex_to_lark(constraint.regex, '')}/"
    if constraint.grammar is not None:
        try:
            return any_to_lark(constraint.grammar)
        except Exception as exc:  # the converter raises bare Exceptions for unknown rules
            raise ConstraintError(constraint.field, f"is not a GBNF grammar: {exc}") from None
    return "start: " + " | ".join(_literal(c) for c in constraint.choices)


def tools_lark(use: ToolUse) -> str:
    """One or several calls, each with arguments valid against its tool's schema, or (unless a
    call is required) text that holds no call: so every call the model writes is a valid one."""
    rules, calls = [], []
    for index, tool in enumerate(use.allowed):
        rules.append(f"args{index}: {_json(tool.parameters)}")
        prefix, close = _literal(tools.call_prefix(tool.name)), _literal("}" + tools.CLOSE)
        calls.append(f"{prefix} args{index} {close}")
    rules += [
        "call: " + " | ".join(calls),
        "calls: call" + (' ("\\n" call)*' if use.parallel else ""),
        "start: calls" if use.required else "start: calls | TEXT",
        f"TEXT: /[^{tools.OPEN[0]}]{ANY}*/ & ~/{ANY}*{re.escape(tools.OPEN)}{ANY}*/",
    ]
    return "\n".join(rules)


@dataclass(frozen=True)
class Grammar:
    """A request's grammar: its Lark text and a matcher at its start."""

    lark: str
    matcher: llguidance.LLMatcher


def compile_grammar(params: SamplingParams, tokenizer: llguidance.LLTokenizer) -> Grammar | None:
    """The grammar of the request's tool calls or constraint, None without either. Raises
    `ConstraintError` naming the field when llguidance cannot compile it or when no text the
    model can write begins it. Blocking (compiles): call it in a worker thread."""
    # Schemas and regexes reach here checked valid: llguidance refusing one is its own limit.
    if params.tools is not None:
        field, lark, checked = "text.tools", tools_lark(params.tools), True
    elif params.constraint is not None:
        constraint = params.constraint
        field, lark = constraint.field, constraint_lark(constraint)
        checked = constraint.grammar is None
    else:
        return None
    matcher = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_lark(lark))
    if matcher.is_error():
        if params.tools is not None:
            field = _bad_tool(params.tools) or field
        why = f"llguidance cannot compile it: {matcher.get_error()}"
        raise ConstraintError(field, why, limit=checked)
    matcher.compute_bitmask()
    if matcher.is_error():
        raise ConstraintError(field, "admits no text this model can write")
    return Grammar(lark, matcher)


def _bad_tool(use: ToolUse) -> str:
    """The parameters field of the first tool whose schema llguidance cannot compile."""
    for tool in use.allowed:
        lark = llguidance.LLMatcher.grammar_from_lark("start: " + _json(tool.parameters))
        if llguidance.LLMatcher.validate_grammar(lark):
            return f"text.tools[{use.tools.index(tool)}].parameters"
    return ""


def allowed(matcher: llguidance.LLMatcher, vocab: int) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Which of the `vocab` tokens the grammar allows next (only end-of-sequence once the
    grammar is complete or at a dead end)."""
    mask = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
    return np.unpackbits(mask, bitorder="little")[:vocab].astype(bool)
