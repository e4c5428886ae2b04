"""A corpus of escape attempts: each fails safely, the sandbox keeps serving, the next run is clean.

Each entry is (name, program, expected failure kinds). REJECTED programs never run: the dialect's
static rules refuse them. The others run and are stopped by the restricted runtime or the OS jail.
"""

from __future__ import annotations

from typing import TypeAlias

import pytest

from genmesh.sandbox.executor import Executor
from genmesh.v1 import program_pb2
from tests.sandbox.conftest import PythonHost, run_result

pytestmark = pytest.mark.asyncio(loop_scope="session")

K = program_pb2.ProgramError
Kind: TypeAlias = K.Kind.ValueType
REJECTED: set[Kind] = {K.KIND_VIOLATION}
RUNTIME: set[Kind] = {K.KIND_EXCEPTION, K.KIND_VIOLATION}
STOPPED: set[Kind] = {K.KIND_TIMEOUT, K.KIND_MEMORY, K.KIND_LIMIT}

CORPUS: list[tuple[str, str, set[Kind]]] = [
    # import tricks
    ("import", "import os", REJECTED),
    ("from-import", "from subprocess import run", REJECTED),
    ("dunder-import", "__import__('os')", REJECTED),
    ("module-attr-codecs", "json.codecs", RUNTIME),
    ("module-attr-sre", "re.sre_compile", RUNTIME),
    ("random-os", "random.os.system('id')", RUNTIME),
    ("collections-abc-sys", "collections.abc.sys", RUNTIME),
    ("datetime-sys", "datetime.sys.modules", RUNTIME),
    ("functools-wraps", "functools.update_wrapper(dict(), len, ['__globals__'])", RUNTIME),
    ("importlib-name", "importlib.import_module('os')", RUNTIME),
    # builtins recovery
    ("builtins-name", "__builtins__['open']", REJECTED),
    ("print-self", "print.__self__", REJECTED),
    ("lambda-globals", "(lambda: 0).__globals__", REJECTED),
    ("func-globals", "f = lambda: 0\nf.func_globals", REJECTED),
    ("globals-call", "globals()['__builtins__']", REJECTED),
    ("vars-module", "vars(json)", REJECTED),
    ("dir-call", "dir()", REJECTED),
    ("help-call", "help()", REJECTED),
    ("breakpoint", "breakpoint()", REJECTED),
    ("len-module", "len.__module__", REJECTED),
    ("dict-fromkeys-class", "dict.fromkeys(['a']).__class__", REJECTED),
    # subclass walks
    ("subclasses", "().__class__.__bases__[0].__subclasses__()", REJECTED),
    ("object-subclasses", "object.__subclasses__()", REJECTED),
    ("type-mro", "type(1).mro()", REJECTED),
    ("int-mro", "int.mro()", REJECTED),
    ("list-mro-dunder", "[].__class__.__mro__", REJECTED),
    # frame and traceback walks
    ("gen-frame", "(x for x in [1]).gi_frame.f_back.f_globals", REJECTED),
    (
        "traceback",
        "try:\n    1 / 0\nexcept Exception as e:\n    e.__traceback__.tb_frame",
        REJECTED,
    ),
    (
        "with-traceback",
        "try:\n    1 / 0\nexcept Exception as e:\n    e.with_traceback(None)",
        REJECTED,
    ),
    ("getframe", "sys._getframe()", REJECTED),
    ("code-object", "(lambda: 0).__code__", REJECTED),
    (
        "exception-args-walk",
        "try:\n    1 / 0\nexcept Exception as e:\n    e.args.__class__",
        REJECTED,
    ),
    # format-string attribute access
    ("format-class", "'{0.__class__}'.format(1)", {K.KIND_VIOLATION}),
    ("format-bases", "'{0.__class__.__bases__}'.format([])", {K.KIND_VIOLATION}),
    ("format-map-self", "'{a.__self__}'.format_map({'a': len})", {K.KIND_VIOLATION}),
    ("format-unbound", "str.format('{0.__class__}', 1)", {K.KIND_VIOLATION}),
    ("format-gi-frame", "'{0.gi_frame}'.format(x for x in [1])", {K.KIND_VIOLATION}),
    ("format-index-then-attr", "'{0[0].__class__}'.format([1])", {K.KIND_VIOLATION}),
    ("format-reference", "f = '{0.__class__}'.format\nf(1)", REJECTED),
    ("format-via-map", "list(map('{0.__class__}'.format, [1]))", REJECTED),
    ("string-formatter", "string.Formatter().format('{0.__class__}', 1)", RUNTIME),
    ("attrgetter", "operator.attrgetter('__class__')(1)", RUNTIME),
    ("methodcaller", "operator.methodcaller('__reduce__')(1)", RUNTIME),
    ("fstring-attr", "f'{(1).__class__}'", REJECTED),
    # unicode identifier tricks
    ("fraktur-eval", "\U0001d522\U0001d533\U0001d51e\U0001d529('1')", REJECTED),
    ("fullwidth-open", "\uff4f\uff50\uff45\uff4e('/etc/passwd')", REJECTED),
    ("cyrillic-open", "\u043epen('/etc/passwd')", RUNTIME),
    ("nfkc-dunder-attr", "x = 1\nx.__\uff43lass__", REJECTED),
    # match-statement patterns
    ("match-class-attr", "match 1:\n    case int(__class__=c):\n        c", REJECTED),
    (
        "match-traceback",
        "try:\n    1 / 0\nexcept Exception as e:\n    match e:\n"
        "        case ZeroDivisionError(__traceback__=tb):\n            tb",
        REJECTED,
    ),
    ("match-gi-frame", "match (x for x in []):\n    case list(gi_frame=f):\n        f", REJECTED),
    ("match-rest-dunder", "match {}:\n    case {**__rest}:\n        1", REJECTED),
    # CPU, memory, output, recursion and regex bombs
    ("infinite-loop", "while True:\n    pass", {K.KIND_TIMEOUT}),
    ("string-bomb", "x = 'a' * (10 ** 11)", {K.KIND_MEMORY}),
    ("list-bomb", "x = [0] * (10 ** 10)", {K.KIND_MEMORY}),
    ("growing-list", "x = []\nwhile True:\n    x.append('y' * 10 ** 6)", {K.KIND_MEMORY}),
    ("recursion", "def f(n):\n    return f(n + 1)\nf(0)", {K.KIND_EXCEPTION}),
    ("output-flood", "while True:\n    print('x' * 1000)", {K.KIND_LIMIT}),
    ("regex-bomb", "re.match('(a+)+$', 'a' * 64 + 'b')", {K.KIND_TIMEOUT}),
    ("bigint-bomb", "x = 10 ** (10 ** 9)", STOPPED),
    ("json-nesting", "json.loads('[' * 200000 + ']' * 200000)", {K.KIND_EXCEPTION}),
    (
        "catch-limit",
        "try:\n    while True:\n        print('x' * 1000)\nexcept:\n    'survived'",
        {K.KIND_LIMIT},
    ),
    # threads, sockets, files, processes
    ("threading", "threading.Thread(target=print).start()", RUNTIME),
    ("socket", "socket.socket()", RUNTIME),
    ("os-system", "os.system('id')", RUNTIME),
    ("open-file", "open('/etc/passwd').read()", REJECTED),
    ("memoryview", "memoryview(b'x')", REJECTED),
    ("subprocess-import", "__import__('subprocess').run(['id'])", REJECTED),
    # tampering with the orchestrator
    ("runtime-call", "__call(print, 1)", REJECTED),
    ("runtime-resolve-replace", "__r = None", REJECTED),
    ("stub-internals", "fetch._name", REJECTED),
    ("stub-globals", "fetch.func_globals", REJECTED),
    ("pending-internals", "r = fetch()\nr._value", REJECTED),
    ("pending-class", "r = fetch()\nr.__class__", REJECTED),
    ("json-loads-globals", "json.loads.__globals__['Dict']", REJECTED),
    ("call-budget", "[fetch() for i in range(100000)]", {K.KIND_LIMIT}),
    ("huge-argument", "fetch(key='x' * (20 * 10 ** 6))", {K.KIND_LIMIT}),
    (
        "deep-argument",
        "x = []\nfor i in range(1000):\n    x = [x]\nfetch(key=x)",
        {K.KIND_EXCEPTION},
    ),
    # malicious values returned by the host
    ("host-dunder-keys", "r = evil()\nr.__class__", REJECTED),
    ("host-deep-nesting", "r = deep()\nlen(str(r))", RUNTIME),
]


def host() -> PythonHost:
    def deep() -> object:
        value: object = []
        for _ in range(5000):
            value = [value]
        return value

    return PythonHost(
        fetch=lambda key=None: {"key": key},
        evil=lambda: {"__class__": "x", "__getattr__": 1, "keys": "shadow"},
        deep=deep,
    )


def limited(code: str) -> program_pb2.Program:
    program = program_pb2.Program(
        code=code, client_functions="def fetch(key=None): ...\ndef evil(): ...\ndef deep(): ..."
    )
    program.limits.wall_time.FromMilliseconds(3000)
    program.limits.cpu_time.FromMilliseconds(1000)
    program.limits.max_memory_bytes = 512 << 20
    program.limits.max_output_bytes = 64 << 10
    program.limits.max_calls = 50
    return program


CLEAN = "[math.pi, json.dumps({'a': 1}), random.random(), fetch('k').key, 'ok']"


async def test_the_corpus_is_large() -> None:
    assert len(CORPUS) >= 60


@pytest.mark.parametrize(("name", "code", "kinds"), CORPUS, ids=[c[0] for c in CORPUS])
async def test_escape_fails_safely_and_the_next_run_is_clean(
    executor: Executor, name: str, code: str, kinds: set[Kind]
) -> None:
    result = await executor.run(limited(code), host())
    assert result.HasField("error"), f"{name} produced {result.value}"
    assert result.error.kind in kinds, result.error
    if kinds is REJECTED:
        assert result.error.type == "DialectError"
        assert result.error.line > 0
    clean = await executor.run(limited(CLEAN), host())
    assert run_result(clean)[1:] == ['{"a": 1}', run_result(clean)[2], "k", "ok"]


async def test_state_does_not_leak_between_runs(executor: Executor) -> None:
    baseline = run_result(await executor.run(limited(CLEAN), host()))
    poison = "json.dumps = None\nmath.pi = 3\nrandom.seed(99)\nrandom.random()\nsecret = 'x'\n1"
    assert run_result(await executor.run(limited(poison), host())) == 1
    after = run_result(await executor.run(limited(CLEAN), host()))
    assert after == baseline
    leaked = await executor.run(limited("secret"), host())
    assert leaked.error.type == "NameError"


async def test_host_values_cannot_shadow_dict_methods(executor: Executor) -> None:
    code = "r = evil()\n[r['__class__'], callable(r.keys), r['keys']]"
    assert run_result(await executor.run(limited(code), host())) == ["x", True, "shadow"]
