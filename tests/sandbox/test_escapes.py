"""A corpus of escape attempts: each fails safely, the sandbox keeps serving, the next run is clean.

Each CORPUS entry is (name, program, expected failure kinds). REJECTED programs never run: the
dialect's static rules refuse them. The others run and are stopped by the restricted runtime or
the OS jail. Each GUARDED entry is (name, program, rule): one door of the attribute guard (every
path the policy knows to an attribute or a callable's internals), which must end the run with a
violation of that rule and leak no internal object.
"""

from __future__ import annotations

from typing import TypeAlias

import pytest
from google.protobuf import json_format

from genmesh.sandbox import policy
from genmesh.sandbox.executor import Executor
from genmesh.v1 import program_pb2
from tests.sandbox.conftest import PythonHost, run_result

pytestmark = pytest.mark.asyncio(loop_scope="session")

K = program_pb2.ProgramError
Kind: TypeAlias = K.Kind.ValueType
REJECTED: set[Kind] = {K.KIND_VIOLATION}
RUNTIME: set[Kind] = {K.KIND_EXCEPTION, K.KIND_VIOLATION}
STOPPED: set[Kind] = {K.KIND_TIMEOUT, K.KIND_MEMORY, K.KIND_LIMIT}
LIMIT: set[Kind] = {K.KIND_LIMIT}

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
    # a memoized class: functools' wrapper would hold a copy of its namespace, raw
    (
        "lru-cache-class-format",
        "f = functools.lru_cache(str).format\nf('{0.__globals__[RUN].fd}', print)",
        RUNTIME,
    ),
    (
        "cache-class-format-map",
        "f = functools.cache(str).format_map\n"
        "f('{p.__func__.__globals__[_os]}', {'p': random.seed})",
        RUNTIME,
    ),
    ("lru-cache-class-property", "str(functools.lru_cache(fractions.Fraction).numerator)", RUNTIME),
    (
        "lru-cache-enum-property-setter",
        "str(functools.lru_cache(maxsize=None)(re.RegexFlag).DEBUG.setter(print))",
        RUNTIME,
    ),
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
    ("format-reference", "f = '{0.__class__}'.format\nf(1)", {K.KIND_VIOLATION}),
    ("format-via-map", "list(map('{0.__class__}'.format, [1]))", {K.KIND_VIOLATION}),
    ("string-formatter", "string.Formatter().format('{0.__class__}', 1)", RUNTIME),
    ("attrgetter", "operator.attrgetter('__class__')(1)", RUNTIME),
    ("methodcaller", "operator.methodcaller('__reduce__')(1)", RUNTIME),
    ("fstring-attr", "f'{(1).__class__}'", REJECTED),
    # templates that name no attributes: they fail as ordinary exceptions, walking nothing
    ("percent-mapping-dunder", "'%(__class__)s' % {}", {K.KIND_EXCEPTION}),
    ("percent-not-a-mapping", "'%(__globals__)s' % print", {K.KIND_EXCEPTION}),
    ("template-dunder", "string.Template('${__class__}').substitute({})", {K.KIND_EXCEPTION}),
    ("fstring-spec-template", "t = '{0.__class__}'\nf'{1:{t}}'", {K.KIND_EXCEPTION}),
    ("format-builtin-template", "format(1, '{0.__class__}')", {K.KIND_EXCEPTION}),
    ("namedtuple-dunder-field", "collections.namedtuple('P', ['__class__'])", {K.KIND_EXCEPTION}),
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
    # iterators nested too deeply for the C stack (C code without a recursion check): the child
    # dies of SIGSEGV, reported as a limit
    *(
        (f"nested-{name}", f"x = [1]\nfor i in range(300000):\n    x = {wrap}\nlist(x)", LIMIT)
        for name, wrap in [("zip", "zip(x)"), ("chain", "itertools.chain(x)")]
    ),
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


# Each program puts what it reaches into its result, so an open door would show in it.
GUARDED: list[tuple[str, str, str]] = [
    # the dot, and the builtins that reach attributes by name
    ("dot-generator-method", "g = (x for x in [1])\ng.send", "unreadable-type"),
    ("dot-function-attribute", "f = lambda: 0\nf.x", "unreadable-type"),
    ("dot-builtin-attribute", "len.x", "unreadable-type"),
    ("dot-bound-method-attribute", "[].append.x", "unreadable-type"),
    ("dot-view-member", "json.codecs.sys", "module-member"),
    ("getattr", "getattr(1, '__class__')", "forbidden-name"),
    ("hasattr", "hasattr(json, 'codecs')", "forbidden-name"),
    ("vars", "vars(json)", "forbidden-name"),
    ("dir", "dir(json)", "forbidden-name"),
    ("getattr-as-keyword", "sorted([1], key=getattr)", "forbidden-name"),
    # match patterns read attributes in C: checked statically
    ("match-format", "match 'x':\n    case str(format=f):\n        f", "pattern-attribute"),
    (
        "match-format-map",
        "match 'x':\n    case str(format_map=f):\n        f",
        "pattern-attribute",
    ),
    (
        "match-exception-obj",
        "try:\n    (1).foo\nexcept AttributeError as e:\n    match e:\n"
        "        case AttributeError(obj=o):\n            r = o\nr",
        "pattern-attribute",
    ),
    ("match-dotted-class", "match 1:\n    case json.codecs.X():\n        1", "module-member"),
    (
        "match-dunder-class",
        "match 1:\n    case int.__class__():\n        1",
        "underscore-attribute",
    ),
    ("match-value-dunder", "match 1:\n    case json.__spec__:\n        1", "underscore-attribute"),
    # format templates, however the method is reached and whoever calls it
    ("format-bound-held", "f = '{0.__class__}'.format\nf(1)", "underscore-attribute"),
    ("format-unbound", "str.format('{0.__init__.__globals__}', print)", "underscore-attribute"),
    ("format-map", "'{a.__class__}'.format_map({'a': 1})", "underscore-attribute"),
    ("format-map-unbound", "str.format_map('{a.__class__}', {'a': 1})", "underscore-attribute"),
    ("format-via-map", "list(map('{0.__class__}'.format, [1]))", "underscore-attribute"),
    (
        "format-unbound-via-map",
        "list(map(str.format, ['{0.__class__}'], [1]))",
        "underscore-attribute",
    ),
    (
        "format-map-via-map",
        "list(map('{a.__class__}'.format_map, [{'a': 1}]))",
        "underscore-attribute",
    ),
    ("format-partial", "functools.partial('{0.__class__}'.format, 1)()", "underscore-attribute"),
    (
        "format-operator-call",
        "operator.call(str.format, '{0.__class__}', 1)",
        "underscore-attribute",
    ),
    ("format-sorted-key", "sorted([1], key='{0.__class__}'.format)", "underscore-attribute"),
    ("format-max-key", "max([1], key='{0.__init__}'.format)", "underscore-attribute"),
    ("format-filter", "list(filter('{0.__class__}'.format, [1]))", "underscore-attribute"),
    (
        "format-json-default",
        "json.dumps({1}, default='{0.__class__.__init__.__globals__}'.format)",
        "underscore-attribute",
    ),
    ("format-re-sub", "re.sub('a', '{0.__class__}'.format, 'a')", "underscore-attribute"),
    (
        "format-reduce",
        "functools.reduce('{0.__class__}{1}'.format, [1, 2])",
        "underscore-attribute",
    ),
    ("format-lru-cache", "functools.lru_cache('{0.__class__}'.format)(1)", "underscore-attribute"),
    (
        "format-starmap",
        "list(itertools.starmap(str.format, [('{0.__class__}', 1)]))",
        "underscore-attribute",
    ),
    (
        "format-accumulate",
        "list(itertools.accumulate([1, 2], '{0.__class__}{1}'.format))",
        "underscore-attribute",
    ),
    ("format-decorator", "@'{0.__class__}'.format\ndef f():\n    pass\nf", "underscore-attribute"),
    ("format-nested-spec", "'{0:{1.__class__}}'.format(1, 2)", "underscore-attribute"),
    ("format-before-error", "'{0.__class__}{'.format(1)", "underscore-attribute"),
    ("format-gi-frame", "'{0.gi_frame}'.format(x for x in [1])", "internal-attribute"),
    ("format-generator-method", "'{0.send}'.format(x for x in [1])", "unreadable-type"),
    ("format-stored-in-dict", "d = {'f': '{0.__class__}'.format}\nd.f(1)", "underscore-attribute"),
    ("fstring-attribute", "f'{(1).__class__}'", "underscore-attribute"),
    ("fstring-spec-attribute", "x = 1\nf'{x:{x.__class__}}'", "underscore-attribute"),
    ("string-formatter", "string.Formatter().format('{0.__class__}', 1)", "module-member"),
    ("attrgetter", "operator.attrgetter('__class__')(1)", "module-member"),
    ("methodcaller", "operator.methodcaller('__reduce__')(1)", "module-member"),
    # wrapper classes and helpers that walk or copy attributes by name
    ("user-string", "collections.UserString('{0.__class__}').format(1)", "module-member"),
    ("user-dict", "collections.UserDict()", "module-member"),
    ("user-list", "collections.UserList()", "module-member"),
    ("update-wrapper", "functools.update_wrapper({}, len, ['__globals__'])", "module-member"),
    ("wraps", "functools.wraps(len)", "module-member"),
    ("singledispatch", "functools.singledispatch(len).registry", "module-member"),
    ("json-encoder-class", "json.JSONEncoder", "module-member"),
    ("json-cls", "json.dumps(1, cls=json.JSONEncoder)", "module-member"),
    ("system-random", "random.SystemRandom()", "module-member"),
    ("module-in-view", "statistics.sys", "module-member"),
    ("regex-debug-flag", "re.compile('(a)', re.DEBUG)", "module-member"),
    ("regex-debug-number", "re.compile('(a)', 128)", "regex-debug"),
    ("regex-debug-enum", "re.findall('(a)', 'a', re.RegexFlag.DEBUG)", "regex-debug"),
    # descriptors: read on their class, they are not handed out at all
    ("property-getter", "p = fractions.Fraction.numerator\np.fget", "descriptor"),
    ("slot-descriptor", "d = functools.partial.func\nd.x", "descriptor"),
    ("field-descriptor", "int.denominator", "descriptor"),
    ("namedtuple-field", "P = collections.namedtuple('P', ['x'])\nP.x", "descriptor"),
    ("method-descriptor", "m = str.upper\nm.x", "unreadable-type"),
    # __getattr__ fallbacks of attribute dicts and pending values, reached from C
    ("dict-fallback", "'{0.__getattr__}'.format({})", "underscore-attribute"),
    ("pending-fallback", "'{0.keys.__self__}'.format(fetch())", "underscore-attribute"),
    ("pending-method", "r = fetch()\nm = r.keys\nm.x", "unreadable-type"),
    # exception objects
    (
        "exception-obj",
        "try:\n    (1).foo\nexcept AttributeError as e:\n    r = e.obj\nr",
        "exception-attribute",
    ),
    (
        "exception-obj-format",
        "try:\n    (1).foo\nexcept AttributeError as e:\n    r = '{0.obj}'.format(e)\nr",
        "exception-attribute",
    ),
    (
        "exception-context-format",
        "try:\n    1 / 0\nexcept Exception as e:\n    r = '{0.__context__}'.format(e)\nr",
        "underscore-attribute",
    ),
    (
        "exception-traceback",
        "try:\n    1 / 0\nexcept Exception as e:\n    r = e.__traceback__\nr",
        "underscore-attribute",
    ),
    (
        "exception-with-traceback",
        "try:\n    1 / 0\nexcept Exception as e:\n    r = e.with_traceback\nr",
        "internal-attribute",
    ),
    ("exception-note", "e = ValueError(1)\ne.add_note", "exception-attribute"),
    (
        "violation-swallowed-by-finally",
        "def f():\n    try:\n        '{0.__class__}'.format(1)\n    finally:\n"
        "        return 'swallowed'\nx = f()\nprint(x)\nx",
        "underscore-attribute",
    ),
    (
        "violation-swallowed-silently",
        "def f():\n    try:\n        '{0.__class__}'.format(1)\n    finally:\n"
        "        return 'swallowed'\nx = f()\nx",
        "underscore-attribute",
    ),
    (
        "violation-swallowed-in-a-loop",
        "ok = []\nfor n in ['__class__', 'gi_frame', 'real']:\n    try:\n"
        "        v = ('{0.' + n + '}').format(1)\n        ok.append(n)\n    finally:\n"
        "        continue\nok",
        "underscore-attribute",
    ),
    (
        "violation-swallowed-then-raised",
        "try:\n    '{0.__class__}'.format(1)\nfinally:\n    raise KeyError",
        "underscore-attribute",
    ),
    # at the recursion limit the guard has no stack to check (or refuse) with: it still refuses;
    # each padding moves where the limit falls among the guard's own frames
    (
        "refusal-at-the-recursion-limit",
        "def f(n):\n    try:\n        return f(n + 1)\n    except RecursionError:\n        try:\n"
        "            return '{0.__class__}'.format(1)\n        except RecursionError:\n"
        "            return 'caught'\n"
        "def pad(k):\n    return f(0) if k == 0 else pad(k - 1)\n[pad(k) for k in range(4)]",
        "guard-stack",
    ),
    ("except-star", "try:\n    1 / 0\nexcept* ZeroDivisionError:\n    1", "try-star"),
    # generator and coroutine frames
    ("generator-frame", "g = (x for x in [1])\ng.gi_frame", "internal-attribute"),
    ("generator-code", "g = (x for x in [1])\ng.gi_code", "internal-attribute"),
    ("generator-running", "g = (x for x in [1])\ng.gi_running", "internal-attribute"),
    ("generator-close", "g = (x for x in [1])\ng.close", "unreadable-type"),
    ("frame-back", "f = 1\nf.f_back", "internal-attribute"),
    ("cell-contents", "c = 1\nc.cell_contents", "internal-attribute"),
    # attribute writes: only the program's attribute dicts take them
    ("store-module", "json.dumps = None", "attribute-store"),
    ("store-module-augmented", "math.pi += 1", "attribute-store"),
    ("delete-module-member", "del json.loads", "attribute-store"),
    ("store-in-for-target", "for json.x in [1]:\n    pass", "attribute-store"),
    ("store-in-comprehension", "[1 for math.x in [1]]", "attribute-store"),
    ("store-function", "f = lambda: 0\nf.x = 1", "attribute-store"),
    ("store-builtin", "print.x = 1", "attribute-store"),
    ("store-class", "dict.x = 1", "attribute-store"),
    ("store-unlisted-setting", "decimal.getcontext().traps = {}", "attribute-store"),
    ("store-pending", "r = fetch()\nr.keys.x = 1", "attribute-store"),
]

LEAK_MARKERS = (
    "<module",
    "<class",
    "<frame",
    "<code",
    "<traceback",
    "<cell",
    "<function",
    "<built-in",
    "<bound method",
    "<generator",
    "object at 0x",
)


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


@pytest.mark.parametrize(("name", "code", "rule"), GUARDED, ids=[g[0] for g in GUARDED])
async def test_guard_closes_every_attribute_path(
    executor: Executor, name: str, code: str, rule: str
) -> None:
    lines: list[str] = []

    async def on_log(line: program_pb2.LogLine) -> None:
        lines.append(line.text)

    result = await executor.run(limited(code), host(), on_log=on_log)
    assert result.HasField("error"), f"{name} produced {result.value}"
    assert result.error.kind == K.KIND_VIOLATION, result.error
    assert result.error.rule == rule, result.error
    assert policy.RULES[rule] in result.error.message, result.error
    assert result.error.line > 0
    seen = "\n".join([json_format.MessageToJson(result.value), result.error.message, *lines])
    assert not [m for m in LEAK_MARKERS if m in seen], seen
    clean = await executor.run(limited(CLEAN), host())
    assert run_result(clean)[1:] == ['{"a": 1}', run_result(clean)[2], "k", "ok"]


async def test_a_c_stack_overflow_is_a_limit_and_the_next_run_is_clean(executor: Executor) -> None:
    code = "x = [1]\nfor i in range(300000):\n    x = map(abs, x)\nlist(x)"
    result = await executor.run(limited(code), host())
    assert result.error.kind == K.KIND_LIMIT, result.error
    assert "C stack" in result.error.message, result.error
    clean = await executor.run(limited(CLEAN), host())
    assert run_result(clean)[1:] == ['{"a": 1}', run_result(clean)[2], "k", "ok"]


async def test_a_memoized_class_works_and_lends_none_of_its_namespace(executor: Executor) -> None:
    code = """
w = functools.lru_cache(str)
v = functools.lru_cache(maxsize=4)(fractions.Fraction)
c = functools.cache(re.RegexFlag)
fib = functools.cache(lambda n: n if n < 2 else fib(n - 1) + fib(n - 2))
missing = 0
for read in [lambda: w.format, lambda: w.upper, lambda: v.numerator, lambda: c.DEBUG]:
    try:
        read()
    except AttributeError:
        missing += 1
[w(1), w(1), w.cache_info().hits, str(v(1, 2)), c(2) == re.I, fib(30), missing]
"""
    assert run_result(await executor.run(limited(code), host())) == [
        "1",
        "1",
        1,
        "1/2",
        True,
        832040,
        4,
    ]


async def test_the_guard_lets_the_dialect_through(executor: Executor) -> None:
    code = """
user = {"name": "ada", "tags": ["x"]}
user.age = 36
user.age += 1
r = fetch("k")
r.seen = True
with decimal.localcontext() as ctx:
    ctx.prec = 3
    third = str(decimal.Decimal(1) / 3)
Point = collections.namedtuple("Point", ["x", "y"])
match Point(1, 2):
    case Point(a, y=b):
        point = a + b
try:
    (1).foo
except AttributeError as e:
    caught = [e.name, len(e.args)]
[
    "{0.name} is {0.age}".format(user),
    "{u.name}/{k.key}".format_map({"u": user, "k": r}),
    list(map("{}-{}".format, [1, 2], [3, 4])),
    list(map(str.format, ["<{}>"], ["a"])),
    f"{user.name!r:>7}",
    "%(name)s" % user,
    string.Template("$name").substitute(user),
    string.Template("$name.__class__").substitute(user),
    r.seen,
    third,
    point,
    caught,
    user.keys() == {"name", "tags", "age"},
    re.sub("(a)", lambda m: m.group(1).upper(), "banana"),
]
"""
    assert run_result(await executor.run(limited(code), host())) == [
        "ada is 37",
        "ada/k",
        ["1-3", "2-4"],
        ["<a>"],
        "  'ada'",
        "ada",
        "ada",
        "ada.__class__",
        True,
        "0.333",
        3,
        ["foo", 1],
        True,
        "bAnAnA",
    ]


async def test_state_does_not_leak_between_runs(executor: Executor) -> None:
    baseline = run_result(await executor.run(limited(CLEAN), host()))
    for poison in ("json.dumps = None", "math.pi = 3"):
        refused = await executor.run(limited(poison), host())
        assert refused.error.kind == K.KIND_VIOLATION, refused.error
    poison = "random.seed(99)\nrandom.random()\nsecret = 'x'\n1"
    assert run_result(await executor.run(limited(poison), host())) == 1
    after = run_result(await executor.run(limited(CLEAN), host()))
    assert after == baseline
    leaked = await executor.run(limited("secret"), host())
    assert leaked.error.type == "NameError"


async def test_host_values_cannot_shadow_dict_methods(executor: Executor) -> None:
    code = "r = evil()\n[r['__class__'], callable(r.keys), r['keys']]"
    assert run_result(await executor.run(limited(code), host())) == ["x", True, "shadow"]
