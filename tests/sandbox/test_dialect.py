"""The dialect's static rules: forbidden code is rejected with its line and rule, before it runs."""

from __future__ import annotations

import ast
import dis
import types
from collections import Counter

import pytest

from genmesh.sandbox import dialect

REJECTED = [
    ("import os", "import", 1),
    ("x = 1\nfrom os import path", "import", 2),
    ("x = 1\ndef f():\n    global x\n    x = 2", "global", 3),
    ("def f():\n    y = 1\n    def g():\n        nonlocal y\n    return g", "global", 4),
    ("x = (1).__class__", "underscore-attribute", 1),
    ("y = 2\n__builtins__", "underscore-name", 2),
    ("_private = 1", "underscore-name", 1),
    ("eval('1+1')", "forbidden-name", 1),
    ("exec('x=1')", "forbidden-name", 1),
    ("compile('1', 'f', 'eval')", "forbidden-name", 1),
    ("open('/etc/passwd').read()", "forbidden-name", 1),
    ("getattr(1, 'real')", "forbidden-name", 1),
    ("type(1)", "forbidden-name", 1),
    ("vars()", "forbidden-name", 1),
    ("globals()", "forbidden-name", 1),
    ("x = 1\nclass A:\n    pass", "class", 2),
    ("async def f():\n    pass", "async", 1),
    ("def f():\n    yield 1", "generator", 2),
    ("g = (i for i in [1])\ng.gi_frame", "internal-attribute", 2),
    ("match 1:\n    case int(__class__=c):\n        pass", "underscore-attribute", 2),
    ("match 'x':\n    case str(format=f):\n        pass", "pattern-attribute", 2),
    ("match 'x':\n    case str(format_map=f):\n        pass", "pattern-attribute", 2),
    ("match e:\n    case AttributeError(obj=o):\n        pass", "pattern-attribute", 2),
    ("match g:\n    case list(gi_frame=f):\n        pass", "internal-attribute", 2),
    ("match x:\n    case y.__class__():\n        pass", "underscore-attribute", 2),
    ("match x:\n    case y.format:\n        pass", "pattern-attribute", 2),
    ("match x:\n    case _C():\n        pass", "underscore-name", 2),
    ("try:\n    pass\nexcept* ValueError:\n    pass", "try-star", 1),
    ("def f(_x):\n    return _x", "underscore-name", 1),
    ("try:\n    pass\nexcept Exception as _e:\n    pass", "underscore-name", 3),
    ("def search(x=len): ...", "stub-default", 1),
    ("def search(x={[1]: 2}): ...", "stub-default", 1),
    # literals with no JSON form: the default could never reach the host as written
    ("def search(x=...): ...", "stub-default", 1),
    ("def search(x=set()): ...", "stub-default", 1),
    ("def search(x=1e999): ...", "stub-default", 1),
    ("def search(x=b'raw'): ...", "stub-default", 1),
    ("x = = 1", "syntax", 1),
    ("e = ValueError()\ne.with_traceback(None)", "internal-attribute", 2),
    ("g = 1\n\U0001d522\U0001d533\U0001d51e\U0001d529('1')", "forbidden-name", 2),  # fraktur "eval"
]


@pytest.mark.parametrize(("source", "rule", "line"), REJECTED)
def test_forbidden_code_is_rejected_with_line_and_rule(source: str, rule: str, line: int) -> None:
    with pytest.raises(dialect.DialectError) as caught:
        dialect.compile_module(source, implicit_return=True)
    assert caught.value.rule == rule
    assert caught.value.line == line
    assert f"line {line}" in str(caught.value)


def test_allowed_constructs_compile() -> None:
    source = """
total = 0
for i in range(3):
    total += i
squares = {i: i * i for i in range(3)}
names = [n.upper() for n in ["a", "b"] if n]
try:
    1 / 0
except ZeroDivisionError:
    total = -1
match squares:
    case {0: 0}:
        found = True
match squares:
    case dict(get=g):
        found = callable(g)
    case datetime.date(year=y):
        found = y
f"{total} {'{}'.format(1)} {list(map('{}!'.format, names))}"
"""
    dialect.compile_module(source, implicit_return=True)


def test_every_attribute_path_is_rewritten_through_the_guard() -> None:
    source = """
d = {}
d.a = 1
d.b += 2
del d.a
for d.c in [1]:
    pass
[d.x for d.x in [1]]
(d.y, d.z) = 1, 2
x = d.keys().real
match d:
    case datetime.date(year=y):
        pass
"""
    tree = ast.parse(source)
    code = dialect.compile_module(source, implicit_return=True).code
    names = _names(code)
    assert {"__attr", "__store"} <= names
    stores = sum(
        isinstance(n, ast.Attribute) and not isinstance(n.ctx, ast.Load) for n in ast.walk(tree)
    )
    loads = sum(
        isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load) for n in ast.walk(tree)
    )
    calls = _calls(code)
    # Every store target's object comes from __store; every load but the pattern's dotted name
    # (checked statically with the pattern rule) is an __attr call.
    assert calls["__store"] == stores
    assert calls["__attr"] == loads - 1


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _calls(code: types.CodeType) -> Counter[str]:
    """How often each global name is loaded, over the code object and its nested ones."""
    counts: Counter[str] = Counter()
    for instruction in dis.get_instructions(code):
        if instruction.opname in {"LOAD_NAME", "LOAD_GLOBAL"}:
            counts[str(instruction.argval)] += 1
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            counts += _calls(const)
    return counts


def test_stubs_bind_their_signature() -> None:
    stubs = dialect.parse_stubs(
        "def search_email(keywords=None, start: str = None, *, limit=10):\n"
        '    "Find mail."\n'
        "    ...\n"
    )
    assert [s.name for s in stubs] == ["search_email"]
    params = stubs[0].params
    assert [(p.name, p.kind, p.default) for p in params] == [
        ("keywords", "POSITIONAL_OR_KEYWORD", None),
        ("start", "POSITIONAL_OR_KEYWORD", None),
        ("limit", "KEYWORD_ONLY", 10),
    ]
    assert stubs[0].doc == "Find mail."
    assert dialect.stub_source(stubs) == (
        "def search_email(keywords=None, start=None, *, limit=10): ...\n"
    )


def test_function_declarations_hold_only_stubs() -> None:
    with pytest.raises(dialect.DialectError) as caught:
        dialect.parse_stubs("def f():\n    return 1\n")
    assert caught.value.rule == "stub"


def test_predefined_variables_must_be_plain_names() -> None:
    dialect.validate_globals(["user", "items"])
    with pytest.raises(dialect.DialectError):
        dialect.validate_globals(["__builtins__"])
