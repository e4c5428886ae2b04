"""Constraints as GBNF grammars for llama.cpp's grammar sampler.

JSON schemas go through llama-cpp-python's converter (a port of llama.cpp's
json-schema-to-grammar) restricted to the keywords it really enforces (`ALLOWED`); regular
expressions (alone or as a schema's `pattern`) are translated here from Python's own parse of
them; choices, literals and tool calls are written here. Every grammar is then checked by a cheap
scan before llama.cpp sees it (`check_gbnf`): its size, its nesting depth and repetition counts
(llama.cpp's recursive-descent parser overflows the stack on deep nesting), NUL characters and
character classes that match nothing (llama.cpp aborts once no token can continue a grammar).

Engine limits (`MAX_*`) are FAILED_PRECONDITION naming the field (`ConstraintError(limit=True)`);
what is malformed is INVALID_ARGUMENT.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from genmesh.ttt import tools
from genmesh.ttt.engine import Constraint, ConstraintError, ToolUse

# Engine limits, documented in common.proto's OutputConstraint.
MAX_GRAMMAR_CHARS = 200_000
MAX_NESTING = 600  # brackets open at once in a grammar
MAX_REPETITION = 500  # maxLength, maxItems, {m,n} and the like
MAX_SCHEMA_NODES = 500  # subschemas in one schema (each property's schema is one)
MAX_UNICODE = 0x10FFFF

# Keywords the converter enforces; anything else in a schema is refused, never ignored.
ALLOWED = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        "enum",
        "const",
        "anyOf",
        "allOf",
        "$ref",
        "$defs",
        "definitions",
        "format",
        # Annotations: no effect on validity.
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "readOnly",
        "writeOnly",
        "deprecated",
    }
)
# The converter's own rule names: a $defs entry named so would be merged with them.
_RESERVED = frozenset(
    {"root", "space", "char", "dot", "value", "object", "array", "string", "number", "integer"}
    | {"boolean", "null", "integral-part", "decimal-part", "uuid"}
)
_CONVERTER_ERRORS = (
    AssertionError,
    KeyError,
    IndexError,
    ValueError,
    TypeError,
    NotImplementedError,
    RecursionError,
)
# The converter's string characters admit raw control characters, which JSON forbids.
_LAX_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def _limit(field: str, message: str) -> ConstraintError:
    return ConstraintError(field, message, limit=True)


# -- literals and character classes ------------------------------------------------------------


def _escape_char(char: str, in_class: bool) -> str:
    code = ord(char)
    if code < 0x20 or code == 0x7F or char in '"\\' or (in_class and char in "[]^-"):
        return f"\\x{code:02X}"
    if 0x80 <= code < 0xA0 or 0xD800 <= code < 0xE000:
        return f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}"
    return char


def literal(text: str) -> str:
    """`text` as a GBNF string literal, every character written so llama.cpp reads it back
    exactly (backslashes and quotes included)."""
    return '"' + "".join(_escape_char(c, in_class=False) for c in text) + '"'


Ranges = list[tuple[int, int]]


def _normal(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _complement(ranges: Ranges) -> Ranges:
    out: Ranges = []
    start = 1  # NUL never matches: llama.cpp ends its strings with it
    for lo, hi in _normal(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = max(start, hi + 1)
    if start <= MAX_UNICODE:
        out.append((start, MAX_UNICODE))
    return out


def _minus(ranges: Ranges, removed: Ranges) -> Ranges:
    keep = _complement(removed)
    out = [
        (max(lo, klo), min(hi, khi))
        for lo, hi in _normal(ranges)
        for klo, khi in keep
        if max(lo, klo) <= min(hi, khi)
    ]
    return _normal(out)


def _class(ranges: Ranges) -> str:
    def char(code: int) -> str:
        return _escape_char(chr(code), in_class=True)

    body = "".join(char(lo) if lo == hi else f"{char(lo)}-{char(hi)}" for lo, hi in ranges)
    return f"[{body}]"


@functools.cache
def _unicode_ranges(pattern: str) -> tuple[tuple[int, int], ...]:
    """Every code point `pattern` (one character) matches, in Python's Unicode sense."""
    text = "".join(map(chr, range(1, MAX_UNICODE + 1)))
    return tuple((m.start() + 1, m.end()) for m in re.finditer(f"{pattern}+", text))


_ASCII_WORD: Ranges = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]


def _category(name: str) -> Ranges:
    """A regex category; \\w and \\s are written as their ASCII part (a subset of what Python's
    matches), the negated ones as everything Python's negation matches."""
    if name == "CATEGORY_DIGIT":
        return [(0x30, 0x39)]
    if name == "CATEGORY_WORD":
        return list(_ASCII_WORD)
    if name == "CATEGORY_SPACE":
        return [(0x09, 0x0D), (0x20, 0x20)]
    negated = {"CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_NOT_WORD": r"\W", "CATEGORY_NOT_SPACE": r"\S"}
    if name in negated:
        return list(_unicode_ranges(negated[name]))
    raise KeyError(name)


# -- regular expressions -----------------------------------------------------------------------


class _Regex:
    """Python's parse of a regular expression written as GBNF, matching a subset of what
    `re.fullmatch` accepts (exactly the same set but for \\w and \\s, written as ASCII)."""

    def __init__(self, field: str, excluded: Ranges, dotall: bool = False) -> None:
        self.field = field
        self.excluded = excluded  # characters never written (a JSON string's quotes, escapes)
        self.dotall = dotall

    def refuse(self, construct: str) -> ConstraintError:
        return _limit(self.field, f"the llama.cpp engine does not support {construct} in regexes")

    def translate(self, pattern: str) -> str:
        from re import _parser  # type: ignore[attr-defined]

        try:
            parsed = _parser.parse(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            raise ConstraintError(self.field, f"is not a regular expression: {exc}") from None
        flags = parsed.state.flags
        if flags & (re.IGNORECASE | re.MULTILINE | re.ASCII | re.LOCALE):
            raise self.refuse("the flags i, m, a and L")
        self.dotall = self.dotall or bool(flags & re.DOTALL)
        return self.sequence(list(parsed), start=True, end=True)

    def sequence(self, items: list[Any], start: bool, end: bool) -> str:
        parts = []
        for index, (op, av) in enumerate(items):
            zero_before = all(str(o) == "AT" for o, _ in items[:index])
            zero_after = all(str(o) == "AT" for o, _ in items[index + 1 :])
            part = self.node(str(op), av, start and zero_before, end and zero_after)
            if part:
                parts.append(part)
        return " ".join(parts) if parts else '""'

    def node(self, op: str, av: Any, start: bool, end: bool) -> str:
        if op == "LITERAL":
            return self.chars([(av, av)], f"the character {chr(av)!r}")
        if op == "NOT_LITERAL":
            return self.chars(_complement([(av, av)]), "a negated character")
        if op == "ANY":
            return self.chars(_complement([] if self.dotall else [(10, 10)]), "'.'")
        if op == "IN":
            return self.chars(self.in_class(av), "a character class")
        if op == "BRANCH":
            branches = [self.sequence(list(b), start, end) for b in av[1]]
            return "(" + " | ".join(branches) + ")"
        if op == "SUBPATTERN":
            _group, add_flags, del_flags, sub = av
            if add_flags or del_flags:
                raise self.refuse("inline flags")
            return "(" + self.sequence(list(sub), start, end) + ")"
        if op in ("MAX_REPEAT", "MIN_REPEAT"):  # lazy or greedy: the same full matches
            low, high, sub = av
            unbounded = high >= 2**31 - 1 or str(high) == "MAXREPEAT"
            if low > MAX_REPETITION or (not unbounded and high > MAX_REPETITION):
                raise _limit(self.field, f"repeats more than {MAX_REPETITION} times")
            body = "(" + self.sequence(list(sub), start=False, end=False) + ")"
            if unbounded:
                return body + ("*" if low == 0 else "+" if low == 1 else f"{{{low},}}")
            if (low, high) == (0, 1):
                return body + "?"
            return body + (f"{{{low}}}" if low == high else f"{{{low},{high}}}")
        if op == "AT":
            where = str(av)
            if where in ("AT_BEGINNING", "AT_BEGINNING_STRING") and start:
                return ""
            if where in ("AT_END", "AT_END_STRING") and end:
                return ""
            raise self.refuse(f"the anchor {where} away from the pattern's ends")
        names = {
            "GROUPREF": "backreferences",
            "GROUPREF_EXISTS": "conditional groups",
            "ASSERT": "lookahead or lookbehind",
            "ASSERT_NOT": "negative lookahead or lookbehind",
            "POSSESSIVE_REPEAT": "possessive quantifiers",
            "ATOMIC_GROUP": "atomic groups",
        }
        raise self.refuse(names.get(op, op))

    def in_class(self, items: list[Any]) -> Ranges:
        ranges: Ranges = []
        negate = False
        for code, av in items:
            op = str(code)
            if op == "NEGATE":
                negate = True
            elif op == "LITERAL":
                ranges.append((av, av))
            elif op == "RANGE":
                ranges.append((av[0], av[1]))
            elif op == "CATEGORY":
                ranges.extend(_category(str(av)))
            else:
                raise self.refuse(f"{op} in a character class")
        if negate:
            # A negated class must not admit what Python's \w or \s would have excluded.
            ranges = [*ranges, *self._unicode_extras(items)]
            return _complement(ranges)
        return _normal(ranges)

    @staticmethod
    def _unicode_extras(items: list[Any]) -> Ranges:
        extra: Ranges = []
        for op, av in items:
            if str(op) == "CATEGORY" and str(av) in ("CATEGORY_WORD", "CATEGORY_SPACE"):
                extra.extend(_unicode_ranges(r"\w" if str(av) == "CATEGORY_WORD" else r"\s"))
            if str(op) == "CATEGORY" and str(av) == "CATEGORY_DIGIT":
                extra.extend(_unicode_ranges(r"\d"))
        return extra

    def chars(self, ranges: Ranges, what: str) -> str:
        kept = _minus(ranges, [(0, 0), *self.excluded])
        if not kept:
            if _minus(ranges, [(0, 0)]):
                raise self.refuse(f"{what} (it can only be written escaped in a JSON string)")
            raise ConstraintError(self.field, f"{what} matches no character")
        if len(kept) == 1 and kept[0][0] == kept[0][1]:
            return literal(chr(kept[0][0]))
        return _class(kept)


def regex_gbnf(pattern: str, field: str) -> str:
    """A grammar whose sentences are strings `re.fullmatch(pattern, ...)` accepts."""
    return "root ::= " + _Regex(field, excluded=[]).translate(pattern)


# -- JSON schemas ------------------------------------------------------------------------------


def _children(schema: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for key in ("properties", "$defs", "definitions"):
        value = schema.get(key)
        if isinstance(value, dict):
            for name, sub in value.items():
                yield f"{key}.{name}", sub
    for key in ("anyOf", "allOf"):
        for index, sub in enumerate(schema.get(key) or ()):
            yield f"{key}[{index}]", sub
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield key, schema[key]


def check_schema(schema: Any, field: str) -> None:
    """Refuses (FAILED_PRECONDITION naming the keyword's path) any schema the converter would
    not enforce exactly: the allowlist above, and combinations it gets wrong."""
    nodes = 0

    def visit(node: Any, path: str) -> None:
        nonlocal nodes
        nodes += 1
        if nodes > MAX_SCHEMA_NODES:
            raise _limit(field, f"has more than {MAX_SCHEMA_NODES} subschemas")
        if isinstance(node, bool):
            if node is False:
                raise _limit(field, f"{path or 'the schema'} is false (nothing is valid)")
            return
        if not isinstance(node, dict):
            return

        def refuse(keyword: str, why: str = "") -> ConstraintError:
            where = f"{path}.{keyword}" if path else keyword
            return _limit(field, f"the llama.cpp engine cannot enforce {where}{why}")

        for keyword in node:
            if keyword not in ALLOWED:
                raise refuse(keyword)
        kind = node.get("type")
        if isinstance(kind, list) and len(kind) != 1 and set(node) - {"type", *_ANNOTATIONS}:
            raise refuse("type", " (a list of types with other keywords)")
        for keyword in ("minLength", "maxLength", "minItems", "maxItems"):
            value = node.get(keyword)
            if isinstance(value, int) and value > MAX_REPETITION:
                raise refuse(keyword, f" above {MAX_REPETITION}")
        if "pattern" in node and ({"minLength", "maxLength", "format"} & node.keys()):
            raise refuse("pattern", " with minLength, maxLength or format")
        if isinstance(node.get("items"), list) or ("items" in node and node["items"] is False):
            raise refuse("items", " as a list (tuples)")
        properties = node.get("properties") or {}
        missing = [r for r in node.get("required") or () if r not in properties]
        if missing and not node.get("allOf"):
            raise refuse("required", f" naming {missing[0]!r}, absent from properties")
        for index, part in enumerate(node.get("allOf") or ()):
            if not isinstance(part, dict) or not (
                "properties" in part or "$ref" in part or "anyOf" in part
            ):
                raise refuse(f"allOf[{index}]", " (only object parts are merged)")
        if "allOf" in node and set(node) - {"allOf", "type", *_ANNOTATIONS}:
            raise refuse("allOf", " with sibling keywords")
        for key in ("$defs", "definitions"):
            for name in node.get(key) or {}:
                if name in _RESERVED or name.startswith("tool"):
                    raise refuse(f"{key}.{name}", " (the name of a built-in rule)")
        for key, sub in _children(node):
            visit(sub, f"{path}.{key}" if path else key)

    visit(schema, "")


_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment"}
    | {"readOnly", "writeOnly", "deprecated", "$defs", "definitions"}
)


def _converter(field: str) -> Any:
    from llama_cpp.llama_grammar import SchemaConverter

    class Converter(SchemaConverter):
        def _format_literal(self, text: str) -> str:
            return literal(text)

        def _visit_pattern(self, pattern: str, name: str) -> str:
            # Inside a JSON string: no quotes, backslashes or control characters unescaped.
            excluded = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F)]
            body = _Regex(field, excluded).translate(pattern)
            return str(self._add_rule(name, f'"\\"" {body} "\\"" space'))  # type: ignore[no-untyped-call]

    return Converter(  # type: ignore[no-untyped-call]
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )


def _schema_grammar(schema: dict[str, Any], field: str) -> str:
    check_schema(schema, field)
    converter = _converter(field)
    try:
        if not schema:  # {}: any JSON value, as common.proto documents
            converter._add_primitive("value", _primitive("value"))
            converter._rules["root"] = "value"
        else:
            converter.visit(converter.resolve_refs(schema, ""), "")
    except ConstraintError:
        raise
    except _CONVERTER_ERRORS as exc:
        raise _limit(field, f"the llama.cpp engine cannot compile the schema: {exc!r}") from None
    return str(converter.format_grammar()).replace(_LAX_CHAR, _JSON_CHAR)


def _primitive(name: str) -> Any:
    from llama_cpp.llama_grammar import PRIMITIVE_RULES

    return PRIMITIVE_RULES[name]


# -- grammar text ------------------------------------------------------------------------------

_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)", re.DOTALL)
_SIMPLE = {"n": 10, "r": 13, "t": 9}
_NAME = re.compile(r"[A-Za-z0-9-]+")
_BOUNDS = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def _char_at(text: str, index: int) -> tuple[int, int]:
    """The code point at `index` of a literal or class (escapes decoded) and the next index."""
    if text[index] != "\\":
        return ord(text[index]), index + 1
    match = _ESCAPE.match(text, index)
    if match is None:
        return ord("\\"), index + 1
    code = match.group(1)
    value = int(code[1:], 16) if code[0] in "xuU" and len(code) > 1 else None
    return (value if value is not None else _SIMPLE.get(code, ord(code))), match.end()


def _tokens(text: str, field: str) -> Iterator[tuple[str, str, int]]:
    """(kind, text, position) of each token outside comments: name, literal, class, other."""
    index, size = 0, len(text)
    while index < size:
        char = text[index]
        if char == "#":
            end = text.find("\n", index)
            index = size if end < 0 else end
        elif char in {'"', "["}:
            close = '"' if char == '"' else "]"
            end = index + 1
            while end < size and text[end] != close:
                end += 2 if text[end] == "\\" else 1
            if end >= size:
                raise ConstraintError(field, f"has an unterminated {char} at {index}")
            yield ("literal" if char == '"' else "class"), text[index : end + 1], index
            index = end + 1
        elif match := _NAME.match(text, index):
            yield "name", match.group(), index
            index = match.end()
        else:
            yield "other", char, index
            index += 1


def check_gbnf(text: str, field: str) -> None:
    """The cheap scan every grammar passes before llama.cpp parses it: size, nesting depth,
    repetition counts, NUL and character classes that match nothing."""
    if len(text) > MAX_GRAMMAR_CHARS:
        raise _limit(field, f"is longer than {MAX_GRAMMAR_CHARS} characters")
    if "\x00" in text:
        raise ConstraintError(field, "contains a NUL character")
    depth = 0
    for kind, token, position in _tokens(text, field):
        if kind == "other" and token in "(":
            depth += 1
            if depth > MAX_NESTING:
                raise _limit(field, f"nests more than {MAX_NESTING} groups")
        elif kind == "other" and token == ")":
            depth = max(0, depth - 1)
        elif kind == "other" and token == "{":
            bounds = _BOUNDS.match(text, position)
            if bounds and any(int(b) > MAX_REPETITION for b in bounds.groups() if b):
                raise _limit(field, f"repeats more than {MAX_REPETITION} times")
        elif kind == "literal":
            index = 1
            while index < len(token) - 1:
                code, index = _char_at(token, index)
                if code == 0:
                    raise ConstraintError(field, f"has a NUL character in {token}")
        elif kind == "class" and not _class_ranges(token):
            raise ConstraintError(field, f"has a character class {token} that matches nothing")


def _class_ranges(token: str) -> Ranges:
    body, negate = token[1:-1], token.startswith("[^")
    index = 1 if negate else 0
    ranges: Ranges = []
    while index < len(body):
        low, index = _char_at(body, index)
        high = low
        if index + 1 < len(body) and body[index] == "-":
            high, index = _char_at(body, index + 1)
        ranges.append((low, high))
    return _complement(ranges) if negate else _minus(ranges, [(0, 0)])


def _prefixed(grammar: str, prefix: str) -> str:
    """`grammar` with every rule name prefixed, so several grammars can be joined."""
    return "".join(
        f"{prefix}{token}" if kind == "name" else token
        for kind, token, _ in _tokens_keeping_all(grammar)
    )


def _tokens_keeping_all(text: str) -> Iterator[tuple[str, str, int]]:
    last = 0
    for kind, token, position in _tokens(text, "grammar"):
        if position > last:
            yield "gap", text[last:position], last
        yield kind, token, position
        last = position + len(token)
    if last < len(text):
        yield "gap", text[last:], last


# -- what the engine calls ---------------------------------------------------------------------


_CACHE: OrderedDict[str, str] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 64


def _cached(thing: Any, make: Callable[[], str]) -> str:
    """`make()`, remembered by `thing`'s JSON for the next few requests' choices."""
    key = json.dumps([type(thing).__name__, dataclasses.asdict(thing)], sort_keys=True)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    text = make()
    with _CACHE_LOCK:
        _CACHE[key] = text
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return text


def _constraint_gbnf(constraint: Constraint) -> str:
    field = constraint.field
    if constraint.grammar is not None:
        text = constraint.grammar
    elif constraint.regex is not None:
        text = regex_gbnf(constraint.regex, field)
    elif constraint.json_schema is not None:
        text = _schema_grammar(constraint.json_schema, field)
    else:
        if any("\x00" in c for c in constraint.choices):
            raise ConstraintError(field, "has a NUL character")
        text = "root ::= " + " | ".join(literal(c) for c in constraint.choices)
    check_gbnf(text, field)
    return text


def constraint_gbnf(constraint: Constraint) -> str:
    """The grammar of a constraint, compiled once per request (cached: the n choices of a
    request, and its retries, share it). Raises `ConstraintError`. Blocking: call it in a
    worker thread."""
    return _cached(constraint, lambda: _constraint_gbnf(constraint))


def _tools_gbnf(use: ToolUse) -> str:
    calls, rules = [], []
    for index, tool in enumerate(use.allowed):
        field = f"text.tools[{use.tools.index(tool)}].parameters"
        schema = tool.parameters
        if schema.get("type") != "object":
            raise ConstraintError(field, "must be an object schema (type: object)")
        rules.append(_prefixed(_schema_grammar(schema, field), f"t{index}-"))
        prefix, close = literal(tools.call_prefix(tool.name)), literal(tools.CLOSE)
        calls.append(f'( {prefix} t{index}-root "}}" {close} )')
    rules += [
        "tool-call ::= " + " | ".join(calls),
        "tool-calls ::= tool-call" + (' ( "\\n" tool-call )*' if use.parallel else ""),
        "root ::= tool-calls" if use.required else "root ::= tool-calls | free-text",
        f"free-text ::= [^{tools.OPEN[0]}\\x00] [^\\x00]*",
    ]
    text = "\n".join(rules)
    check_gbnf(text, "text.tools")
    return text


def tools_gbnf(use: ToolUse) -> str:
    """Calls in the exact layout `tools.HEADER` reads, each with arguments valid against its
    tool's schema (each tool's rules under its own prefix); one or several calls, or (unless a
    call is required) free text instead. Cached per request like `constraint_gbnf`."""
    return _cached(use, lambda: _tools_gbnf(use))


# -- the sampling loop -------------------------------------------------------------------------

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)


def candidate_array(lib: Any, logits: np.ndarray) -> tuple[np.ndarray, Any]:
    """`logits` as llama.cpp's candidate array for `llama_sampler_apply`, and the records it
    points into (which must outlive it; a sampler changes them in place)."""
    data = np.zeros(len(logits), dtype=_TOKEN_DATA)
    data["id"] = np.arange(len(logits), dtype=np.int32)
    data["logit"] = logits
    candidates = lib.llama_token_data_array(
        data=data.ctypes.data_as(lib.llama_token_data_p),
        size=len(logits),
        selected=-1,
        sorted=False,
    )
    return data, candidates


def sample_or_dead_end(lib: Any, sampler: Any, ctx: Any, index: int, n_vocab: int) -> int | None:
    """`llama_sampler_sample(sampler, ctx, index)` without its abort: applies the sampler chain
    (grammar included) to the logits of output `index`, and returns None instead of accepting
    when no token is left (every candidate's logit -inf: the grammar is at a dead end, where
    llama.cpp would abort the process with "Unexpected empty grammar stack"). Otherwise accepts
    the selected token into the chain, as `llama_sampler_sample` does, and returns it."""
    logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, index), shape=(n_vocab,))
    _records, candidates = candidate_array(lib, logits)  # the records live until the return
    lib.llama_sampler_apply(sampler, ctypes.byref(candidates))
    if candidates.size == 0 or not 0 <= candidates.selected < candidates.size:
        return None
    chosen = candidates.data[candidates.selected]
    if not np.isfinite(chosen.logit):
        return None
    lib.llama_sampler_accept(sampler, chosen.id)
    return int(chosen.id)
