"""Constraints compiled to GBNF (`genmesh.ttt.grammar`): what is refused before llama.cpp sees
it, what is translated, and that every grammar made here parses in llama.cpp itself."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any

import pytest

from genmesh.ttt import grammar, structured
from genmesh.ttt.engine import Constraint, ConstraintError, Tool, ToolUse
from genmesh.ttt.models import default_gguf
from genmesh.ttt.textstream import CallDelta, ToolCallParser


def refusal(constraint: Constraint) -> tuple[str, bool]:
    with pytest.raises(ConstraintError) as caught:
        grammar.constraint_gbnf(constraint)
    return caught.value.field, caught.value.limit


@functools.cache
def _vocab() -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(default_gguf()), vocab_only=True, verbose=False)


@pytest.fixture(autouse=True, scope="module")
def _close_vocab() -> Iterator[None]:
    yield
    if _vocab.cache_info().currsize:
        _vocab().close()
        _vocab.cache_clear()


def parses(text: str) -> bool:
    """Whether llama.cpp's own grammar parser accepts `text` (SmolLM2's vocabulary only)."""
    from llama_cpp import llama_cpp

    llm = _vocab()
    sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, text.encode(), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


@pytest.mark.parametrize(
    ("constraint", "field", "limit"),
    [
        (Constraint(grammar='root ::= "\\x00"'), "text.constraint.grammar", False),
        (Constraint(grammar="root ::= []"), "text.constraint.grammar", False),
        (Constraint(grammar="root ::= [^\\x00-\\U0010FFFF]"), "text.constraint.grammar", False),
        (Constraint(grammar="root ::= " + "(" * 50_000), "text.constraint.grammar", True),
        (Constraint(grammar='root ::= "a"{1,9999}'), "text.constraint.grammar", True),
        (Constraint(regex="\\x00"), "text.constraint.regex", False),
        (Constraint(regex="[^\\s\\S]"), "text.constraint.regex", False),
        (Constraint(regex="a{1,9999}"), "text.constraint.regex", True),
        (Constraint(regex="(a)\\1"), "text.constraint.regex", True),
        (Constraint(regex="a(^b)"), "text.constraint.regex", True),
        (Constraint(regex="(?i)a"), "text.constraint.regex", True),
        (Constraint(choices=("a\x00",)), "text.constraint.choices", False),
        (
            Constraint(json_schema={"type": "string", "maxLength": 20_000}),
            "text.constraint.json_schema",
            True,
        ),
        (
            Constraint(json_schema={"type": "array", "items": {}, "maxItems": 20_000}),
            "text.constraint.json_schema",
            True,
        ),
        (
            Constraint(json_schema={"type": "string", "pattern": "\\x00"}),
            "text.constraint.json_schema",
            False,
        ),
    ],
)
def test_refused_before_llama_cpp(constraint: Constraint, field: str, limit: bool) -> None:
    assert refusal(constraint) == (field, limit)


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "integer", "maximum": 9}, "maximum"),
        ({"type": ["string", "null"], "maxLength": 3}, "type"),
        ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "oneOf"),
        ({"type": "object", "properties": {}, "required": ["a"]}, "required"),
        ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "pattern"),
        ({"type": "array", "items": [{"type": "string"}]}, "items"),
        ({"type": "array", "prefixItems": [{"type": "string"}], "minItems": 2}, "prefixItems"),
        ({"type": "array", "contains": {"type": "string"}}, "contains"),
        ({"allOf": [{"type": "string"}]}, "allOf[0]"),
        ({"$defs": {"string": {"type": "integer"}}, "$ref": "#/$defs/string"}, "$defs.string"),
        ({"type": "object", "dependencies": {"a": ["b"]}}, "dependencies"),
        ({"type": "object", "unevaluatedProperties": False}, "unevaluatedProperties"),
    ],
)
def test_schema_keywords_the_converter_ignores_are_refused(
    schema: dict[str, Any], keyword: str
) -> None:
    with pytest.raises(ConstraintError) as caught:
        grammar.constraint_gbnf(Constraint(json_schema=schema))
    assert caught.value.limit and caught.value.field == "text.constraint.json_schema"
    assert keyword in str(caught.value)


def test_empty_schema_means_any_json_value() -> None:
    text = grammar.constraint_gbnf(Constraint(json_schema={}))
    assert "root ::= value" in text and parses(text)


def test_empty_regex_is_the_empty_string() -> None:
    assert Constraint(regex="").field == "text.constraint.regex"
    text = grammar.constraint_gbnf(Constraint(regex=""))
    assert text == 'root ::= ""' and parses(text)


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        (r"\d{3}-\d{4}", "555-1234", "55-1234"),
        (r"(?:ab)+", "abab", "aba"),
        (r"[\w-]+", "a_b-c", "a b"),
        (r"\$\d+", "$12", "12"),
        (r'"[^"]*"', '"hi"', "hi"),
        (r"^a$|^b$", "b", "ab"),
        (r"a+?b", "aab", "b"),
        (r"\s\S", " x", "  "),
    ],
)
def test_regex_dialect(pattern: str, yes: str, no: str) -> None:
    """The regex constructs translated, each grammar accepted by llama.cpp's parser."""
    text = grammar.constraint_gbnf(Constraint(regex=pattern))
    assert parses(text)
    assert re.fullmatch(pattern, yes) and not re.fullmatch(pattern, no)


@pytest.mark.parametrize("choice", ["C:\\new", 'say "hi"', "a\\b", "tab\there", "[x]"])
def test_literals_come_out_exactly(choice: str) -> None:
    assert grammar.literal(choice).count("\\") == sum(1 for c in choice if c in '\\"\t'), (
        "every backslash, quote or control character is one \\x escape"
    )
    text = grammar.constraint_gbnf(Constraint(choices=(choice,)))
    assert parses(text)
    enum = grammar.constraint_gbnf(Constraint(json_schema={"enum": [choice]}))
    assert parses(enum)


def test_repetition_at_the_limit_parses() -> None:
    limit = grammar.MAX_REPETITION
    for schema in (
        {"type": "string", "maxLength": limit},
        {"type": "array", "items": {"type": "integer"}, "maxItems": limit},
    ):
        assert parses(grammar.constraint_gbnf(Constraint(json_schema=schema)))


def test_tools_keep_their_own_definitions() -> None:
    def item(kind: str) -> dict[str, Any]:
        return {
            "type": "object",
            "$defs": {"Item": {"type": kind}},
            "properties": {"x": {"$ref": "#/$defs/Item"}},
            "required": ["x"],
        }

    use = ToolUse((Tool("a", parameters=item("string")), Tool("b", parameters=item("integer"))))
    text = grammar.tools_gbnf(use)
    assert parses(text)
    rules = dict(line.split(" ::= ", 1) for line in text.splitlines())
    assert (rules["t0-x"], rules["t1-x"]) == ("t0-string", "t1-integer")
    refused = ToolUse((Tool("a", parameters={"type": "object", "$defs": {"tool-call": {}}}),))
    with pytest.raises(ConstraintError):
        grammar.tools_gbnf(refused)


def test_tool_call_with_a_bad_name_escape_is_text() -> None:
    parser = ToolCallParser()
    block = '<tool_call>{"name": "a\\q", "arguments": {}}</tool_call>'
    text, deltas = parser.feed(block)
    rest, more = parser.flush()
    assert (text + rest, deltas + more, parser.calls) == (block, [], [])


def streamed(parser: ToolCallParser, text: str) -> tuple[str, list[CallDelta]]:
    """`text` fed one character at a time, as a model streams it: the text and deltas out."""
    out, deltas = "", []
    for char in text:
        piece, made = parser.feed(char)
        out += piece
        deltas += made
    rest, more = parser.flush()
    return out + rest, deltas + more


def calls_from(deltas: list[CallDelta]) -> list[tuple[str, str]]:
    calls: dict[int, list[str]] = {}
    for delta in deltas:
        if delta.id:
            assert delta.call_index not in calls, "one first delta per call"
            calls[delta.call_index] = [delta.name, ""]
        calls[delta.call_index][1] += delta.arguments
    return [(name, arguments) for name, arguments in calls.values()]


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
CHECK = structured.call_check(ToolUse((Tool("f", parameters=SCHEMA),)))


def test_a_call_failing_its_schema_was_never_streamed() -> None:
    """A call's deltas wait until it is complete and valid: the one failing its schema is text,
    and no delta of it was sent before it failed."""
    good = '<tool_call>{"name": "f", "arguments": {"n": 1}}</tool_call>'
    bad = '<tool_call>{"name": "f", "arguments": {"n": "x"}}</tool_call>'
    parser = ToolCallParser(CHECK)
    text, deltas = streamed(parser, bad + "\n" + good)
    assert [(c.name, c.arguments) for c in parser.calls] == [("f", '{"n": 1}')]
    assert calls_from(deltas) == [("f", '{"n": 1}')]
    assert text.strip() == bad
    parser = ToolCallParser(CHECK)
    _, early = parser.feed(good[:-1])
    assert early == [], "nothing of a call before it closes"


def test_a_call_cut_short_streams_what_it_kept() -> None:
    parser = ToolCallParser(CHECK)
    text, deltas = streamed(parser, '<tool_call>{"name": "f", "arguments": {"n": 1')
    assert text == ""
    assert calls_from(deltas) == [(c.name, c.arguments) for c in parser.calls] == [("f", '{"n": 1')]


def test_sampling_detects_a_dead_end_instead_of_aborting() -> None:
    """`sample_or_dead_end` returns None where llama.cpp's own sample would accept a token no
    sampler left (every logit -inf), and samples as usual otherwise."""
    from llama_cpp import Llama
    from llama_cpp import llama_cpp as lib

    llm = Llama(model_path=str(default_gguf()), n_ctx=64, n_batch=64, verbose=False)
    try:
        llm.eval(llm.tokenize(b"Hello"))
        ctx, n_vocab = llm._ctx.ctx, llm.n_vocab()

        def chain(*samplers: Any) -> Any:
            made = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
            for sampler in samplers:
                lib.llama_sampler_chain_add(made, sampler)
            return made

        live = chain(
            lib.llama_sampler_init_grammar(llm._model.vocab, b"root ::= [a-z]+", b"root"),
            lib.llama_sampler_init_greedy(),
        )
        token = grammar.sample_or_dead_end(lib, live, ctx, -1, n_vocab)
        assert token is not None and re.fullmatch(rb"[a-z]+", llm.detokenize([token]).strip())
        lib.llama_sampler_free(live)

        biases = (lib.llama_logit_bias * n_vocab)(
            *(lib.llama_logit_bias(i, float("-inf")) for i in range(n_vocab))
        )
        dead = chain(
            lib.llama_sampler_init_logit_bias(n_vocab, n_vocab, biases),
            lib.llama_sampler_init_dist(7),
        )
        assert grammar.sample_or_dead_end(lib, dead, ctx, -1, n_vocab) is None
        lib.llama_sampler_free(dead)
    finally:
        llm.close()
