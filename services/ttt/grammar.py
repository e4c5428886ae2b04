"""Constraints as GBNF grammars for llama.cpp's grammar sampler.

JSON schemas and regular expressions go through llama-cpp-python's own converter (a port of
llama.cpp's json-schema-to-grammar); choices and tool calls are written here from its literals
and schema rules, so every constraint ends up as one grammar with a `root` rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from genmesh.ttt import tools
from genmesh.ttt.engine import Constraint, ConstraintError, ToolUse

# The converter raises whatever its parsing hits on a schema or pattern it cannot handle.
_CONVERTER_ERRORS = (
    AssertionError,
    KeyError,
    IndexError,
    ValueError,
    TypeError,
    NotImplementedError,
    RecursionError,
)


# Keywords the converter ignores: a grammar from a schema using them would let invalid output
# through, so such a schema is refused instead.
UNENFORCED = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "not",
        "if",
        "then",
        "else",
        "uniqueItems",
        "contains",
        "patternProperties",
        "propertyNames",
        "dependentRequired",
        "dependentSchemas",
        "minProperties",
        "maxProperties",
    }
)
# The converter's string characters admit raw control characters, which JSON forbids.
_LAX_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def _subschemas(schema: Any) -> Iterator[dict[str, Any]]:
    if not isinstance(schema, dict):
        return
    yield schema
    for key in ("properties", "$defs", "definitions"):
        for sub in (schema.get(key) or {}).values():
            yield from _subschemas(sub)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for sub in schema.get(key) or ():
            yield from _subschemas(sub)
    for key in ("items", "additionalProperties"):
        yield from _subschemas(schema.get(key))


def _converter(raw_pattern: bool = False) -> Any:
    from llama_cpp.llama_grammar import SchemaConverter

    return SchemaConverter(  # type: ignore[no-untyped-call]
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=raw_pattern
    )


def _literal(text: str) -> str:
    return str(_converter()._format_literal(text))


def _schema_rule(converter: Any, schema: dict[str, Any], name: str, field: str) -> str:
    """Adds `schema`'s rules to `converter` and returns the name of its top rule (`root` for
    the name "")."""
    for sub in _subschemas(schema):
        ignored = sorted(UNENFORCED & sub.keys())
        if ignored:
            raise ConstraintError(field, f"the llama.cpp engine cannot enforce {ignored}")
    try:
        return str(converter.visit(converter.resolve_refs(schema, name), name))
    except _CONVERTER_ERRORS as exc:
        raise ConstraintError(field, f"cannot compile the JSON schema: {exc!r}") from None


def constraint_gbnf(constraint: Constraint) -> str:
    if constraint.grammar is not None:
        return constraint.grammar
    if constraint.choices:
        return "root ::= " + " | ".join(_literal(c) for c in constraint.choices)
    if constraint.regex is not None:
        pattern = f"^{constraint.regex.removeprefix('^').removesuffix('$')}$"
        converter = _converter(raw_pattern=True)
        _schema_rule(converter, {"type": "string", "pattern": pattern}, "", constraint.field)
        return str(converter.format_grammar())
    converter = _converter()
    _schema_rule(converter, constraint.json_schema or {}, "", constraint.field)
    return _json_strings(converter)


def _json_strings(converter: Any) -> str:
    return str(converter.format_grammar()).replace(_LAX_CHAR, _JSON_CHAR)


def tools_gbnf(use: ToolUse) -> str:
    """Calls in the exact layout `tools.HEADER` reads, each with arguments valid against its
    tool's schema; one or several calls, or (unless a call is required) free text instead."""
    converter = _converter()
    calls = []
    for index, tool in enumerate(use.allowed):
        field = f"text.tools[{use.tools.index(tool)}].parameters"
        arguments = _schema_rule(converter, tool.parameters, f"tool{index}-arguments", field)
        prefix, close = _literal(tools.call_prefix(tool.name)), _literal(tools.CLOSE)
        calls.append(f'( {prefix} {arguments} "}}" {close} )')
    rules = [
        _json_strings(converter),
        "tool-call ::= " + " | ".join(calls),
        "tool-calls ::= tool-call" + (' ( "\\n" tool-call )*' if use.parallel else ""),
        "root ::= tool-calls" if use.required else "root ::= tool-calls | free-text",
        f"free-text ::= [^{tools.OPEN[0]}] [^\\x00]*",
    ]
    return "\n".join(rules)
