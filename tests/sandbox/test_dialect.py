"""The dialect's static rules: forbidden code is rejected with its line and rule, before it runs."""

from __future__ import annotations

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
    ("f = '{}'.format\nf(1)", "format-reference", 1),
    ("x = list(map('{}'.format, [1]))", "format-reference", 1),
    ("match 1:\n    case int(__class__=c):\n        pass", "underscore-attribute", 2),
    ("def f(_x):\n    return _x", "underscore-name", 1),
    ("try:\n    pass\nexcept Exception as _e:\n    pass", "underscore-name", 3),
    ("def search(x=len): ...", "stub-default", 1),
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
f"{total} {'{}'.format(1)}"
"""
    dialect.compile_module(source, implicit_return=True)


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
