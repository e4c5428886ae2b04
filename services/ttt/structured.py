"""The typed text features beyond sampling: output constraints, tools, logprobs and n choices.

Requests are checked here, once for every engine, so a bad schema, regex, tool or count is
INVALID_ARGUMENT naming its field whatever engine would have served it; what an engine cannot do
is FAILED_PRECONDITION naming the field (`refuse_unsupported`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import grpc
import jsonschema
import regex
from google.protobuf import json_format, struct_pb2

from genmesh.runtime import errors
from genmesh.runtime.errors import FieldViolation
from genmesh.ttt.engine import (
    MAX_LOGPROB_ENTRIES,
    Constraint,
    SamplingParams,
    TextEngine,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolUse,
    UnsupportedError,
)
from genmesh.v1 import common_pb2

MAX_CHOICES = 16
MAX_TOP_LOGPROBS = 20
MAX_SEED = 2**63 - 1
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The longest checking one text against a request's regex may take. Python's `re` backtracks:
# `(a|a)*b` on forty a's runs for days, holding the GIL and so the whole service; the `regex`
# module checks a deadline as it goes and releases the GIL.
REGEX_CHECK_SECONDS = 1.0
Mode = common_pb2.ToolChoice.Mode


def json_value(value: Any) -> Any:
    """A Struct's JSON with integral numbers as ints again (protobuf keeps every number as a
    double, and schema keywords such as maxLength must be integers) and keys sorted: a Struct's
    fields come back in an order that changes from process to process, which would make the
    prompts and grammars built from them (and so seeded outputs and reused prompt prefixes)
    differ between replicas and restarts."""
    if isinstance(value, dict):
        return {k: json_value(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [json_value(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _schema(struct: struct_pb2.Struct, field: str, bad: list[FieldViolation]) -> dict[str, Any]:
    schema: dict[str, Any] = json_value(json_format.MessageToDict(struct))
    if _has_nul(schema):
        bad.append(FieldViolation(field, "contains a NUL character"))
        return schema
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        bad.append(FieldViolation(field, f"is not a valid JSON schema: {exc.message}"))
    except (ValueError, TypeError, AttributeError) as exc:
        # A `$schema` that is no URI of a metaschema (a number, an object, a malformed URL)
        # fails jsonschema's lookup of its validator.
        bad.append(FieldViolation(field, f"has an unusable $schema: {exc}"))
    return schema


def constraint(text: common_pb2.TextParameters, bad: list[FieldViolation]) -> Constraint | None:
    kind = text.constraint.WhichOneof("kind")
    field = f"text.constraint.{kind}"
    if kind == "json_schema":
        return Constraint(json_schema=_schema(text.constraint.json_schema, field, bad))
    if kind in ("regex", "grammar") and "\x00" in getattr(text.constraint, kind):
        bad.append(FieldViolation(field, "contains a NUL character"))
    if kind == "regex":
        try:
            re.compile(text.constraint.regex)
        except (re.error, RecursionError, OverflowError) as exc:
            bad.append(FieldViolation(field, f"is not a regular expression: {exc}"))
        return Constraint(regex=text.constraint.regex)
    if kind == "grammar":
        if not text.constraint.grammar.strip():
            bad.append(FieldViolation(field, "is empty"))
        return Constraint(grammar=text.constraint.grammar)
    if kind == "choices":
        choices = tuple(text.constraint.choices.choices)
        if not choices or not all(choices):
            bad.append(FieldViolation(field, "needs at least one choice, none of them empty"))
        elif any("\x00" in c for c in choices):
            bad.append(FieldViolation(field, "contains a NUL character"))
        return Constraint(choices=choices)
    return None


def tool_use(text: common_pb2.TextParameters, bad: list[FieldViolation]) -> ToolUse | None:
    """The tools the model may call, or None when it must answer in text."""
    tools: list[Tool] = []
    for index, tool in enumerate(text.tools):
        if not TOOL_NAME.fullmatch(tool.name):
            bad.append(FieldViolation(f"text.tools[{index}].name", "must be 1-64 of [A-Za-z0-9_-]"))
        elif any(t.name == tool.name for t in tools):
            bad.append(FieldViolation(f"text.tools[{index}].name", "is not unique"))
        parameters = (
            _schema(tool.parameters, f"text.tools[{index}].parameters", bad)
            if tool.HasField("parameters")
            else {"type": "object"}
        )
        if parameters.get("type") != "object":
            bad.append(
                FieldViolation(f"text.tools[{index}].parameters", "must be an object schema")
            )
        tools.append(Tool(tool.name, tool.description, parameters))
    mode, name = text.tool_choice.mode, text.tool_choice.name
    if mode not in Mode.values():
        bad.append(FieldViolation("text.tool_choice.mode", f"unknown mode {mode}"))
    elif mode in (Mode.MODE_REQUIRED, Mode.MODE_NAMED) and not tools:
        bad.append(FieldViolation("text.tool_choice.mode", "needs text.tools"))
    elif mode == Mode.MODE_NAMED and not any(t.name == name for t in tools):
        bad.append(FieldViolation("text.tool_choice.name", f"no tool is named {name!r}"))
    if not tools or mode == Mode.MODE_NONE:
        return None
    if text.constraint.WhichOneof("kind"):
        bad.append(FieldViolation("text.constraint", "cannot be combined with tools"))
    return ToolUse(
        tuple(tools),
        required=mode in (Mode.MODE_REQUIRED, Mode.MODE_NAMED),
        # A named tool is called once, as OpenAI's API and vLLM do.
        parallel=mode != Mode.MODE_NAMED
        and (text.parallel_tool_calls if text.HasField("parallel_tool_calls") else True),
        only=name if mode == Mode.MODE_NAMED else "",
    )


def top_logprobs(text: common_pb2.TextParameters, bad: list[FieldViolation]) -> int | None:
    if not 0 <= text.top_logprobs <= MAX_TOP_LOGPROBS:
        bad.append(FieldViolation("text.top_logprobs", f"must be in 0..{MAX_TOP_LOGPROBS}"))
    elif text.top_logprobs and not (text.logprobs or text.prompt_logprobs):
        bad.append(FieldViolation("text.top_logprobs", "needs text.logprobs or prompt_logprobs"))
    return text.top_logprobs if text.logprobs else None


def choices(text: common_pb2.TextParameters, bad: list[FieldViolation]) -> int:
    n = text.n if text.HasField("n") else 1
    if not 1 <= n <= MAX_CHOICES:
        bad.append(FieldViolation("text.n", f"must be in 1..{MAX_CHOICES}"))
    elif text.HasField("seed") and text.seed > MAX_SEED - (n - 1):
        # Choice i is seeded with seed + i, which must stay an int64.
        bad.append(FieldViolation("text.seed", f"must be at most {MAX_SEED} - (n - 1)"))
    return n


def response_size(n: int, max_tokens: int, top: int | None, bad: list[FieldViolation]) -> None:
    """Logprobs grow a response by n x max_tokens x (top_logprobs + 1) entries: capped."""
    if top is not None and n * max_tokens * (top + 1) > MAX_LOGPROB_ENTRIES:
        bad.append(
            FieldViolation(
                "text.logprobs",
                f"n x max_tokens x (top_logprobs + 1) must be at most {MAX_LOGPROB_ENTRIES}",
            )
        )


def refuse_unsupported(engine: TextEngine, params: SamplingParams) -> None:
    """FAILED_PRECONDITION for what the request asks beyond the engine's features."""
    wanted = []
    if params.constraint is not None:
        field = params.constraint.field
        wanted.append((field.rsplit(".", 1)[1], field, "constrain output"))
    if params.tools is not None:
        wanted.append(("tools", "text.tools", "call tools"))
    if params.top_logprobs is not None:
        wanted.append(("logprobs", "text.logprobs", "report logprobs"))
    if params.raw_prompt:
        wanted.append(("raw_prompt", "text.raw_prompt", "continue a raw prompt"))
    if params.prompt_logprobs is not None:
        wanted.append(("prompt_logprobs", "text.prompt_logprobs", "score the prompt"))
    for name in ("presence_penalty", "frequency_penalty", "logit_bias"):
        if getattr(params, name):
            wanted.append(("penalties", f"text.{name}", "adjust logits"))
    if params.min_tokens:
        held = "text.ignore_eos" if params.ignore_eos else "text.min_tokens"
        wanted.append(("min_tokens", held, "hold off the end of text"))
    for feature, field, what in wanted:
        if feature not in engine.features:
            raise unsupported(UnsupportedError(engine.info().engine, field, what))


def unsupported(exc: UnsupportedError) -> errors.ServiceError:
    return errors.ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        str(exc),
        reason="UNSUPPORTED_BY_ENGINE",
        violations=[FieldViolation(exc.field, str(exc))],
    )


def tool_call_proto(call: ToolCall) -> common_pb2.ToolCall:
    return common_pb2.ToolCall(id=call.id, name=call.name, arguments=call.arguments)


def logprob_proto(entry: TokenLogprob) -> common_pb2.TokenLogprob:
    return common_pb2.TokenLogprob(
        token_id=entry.token_id,
        token=entry.text.decode(errors="replace"),
        logprob=entry.logprob,
        bytes=entry.text,
        top_logprobs=[
            common_pb2.TokenAlternative(
                token_id=t.token_id,
                token=t.text.decode(errors="replace"),
                logprob=t.logprob,
                bytes=t.text,
            )
            for t in entry.top
        ],
    )


def fullmatch(pattern: str, text: str) -> bool | None:
    """Whether all of `text` matches `pattern`; None when that could not be told in
    REGEX_CHECK_SECONDS (or by the `regex` module at all)."""
    try:
        found = regex.fullmatch(pattern, text, timeout=REGEX_CHECK_SECONDS, concurrent=True)
    except (TimeoutError, regex.error):
        return None
    return found is not None


def unsatisfied(text: str, constraint: Constraint) -> str:
    """Why `text` breaks `constraint` ("" when it satisfies it, or when only the engine can
    tell: a GBNF grammar)."""
    if constraint.choices:
        return "" if text in constraint.choices else "the output is none of the choices"
    if constraint.regex is not None:
        # Untold in time, the engine's grammar is trusted, as for GBNF.
        if fullmatch(constraint.regex, text) is False:
            return "the output does not match the regex"
        return ""
    if constraint.json_schema is not None:
        try:
            jsonschema.validate(json.loads(text), constraint.json_schema)
        except json.JSONDecodeError as exc:
            return f"the output is not JSON: {exc}"
        except jsonschema.ValidationError as exc:
            return f"the output does not validate against the schema: {exc.message}"
    return ""


def call_check(use: ToolUse | None) -> Callable[[str, str], bool] | None:
    """Whether a parsed call (name, arguments) is one the request allows, with arguments valid
    against its tool's schema; None when no tools were offered."""
    if use is None:
        return None
    schemas = {t.name: t.parameters for t in use.allowed}

    def check(name: str, arguments: str) -> bool:
        if name not in schemas:
            return False
        try:
            jsonschema.validate(json.loads(arguments), schemas[name])
        except (json.JSONDecodeError, jsonschema.ValidationError, RecursionError):
            return False
        return True

    return check
