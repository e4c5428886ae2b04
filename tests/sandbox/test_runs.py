"""Programs run in jailed children: values, attribute dicts, host calls, overlap and order."""

from __future__ import annotations

from typing import Any

import pytest

from genmesh.runtime.values import py_from_value
from genmesh.sandbox import replay
from genmesh.sandbox.executor import Executor
from genmesh.v1 import program_pb2
from tests.sandbox.conftest import PythonHost, run_result, sleep_echo

pytestmark = pytest.mark.asyncio(loop_scope="session")

STUBS = """
def fetch(key=None, seconds: float = 0.1): ...
def send(text=None, seconds: float = 0.05): ...
def fail(reason=None): ...
"""


def host() -> PythonHost:
    async def fetch(key: Any = None, seconds: float = 0.1) -> Any:
        return await sleep_echo(seconds, key=key, item={"title": f"t-{key}", "n": 1})

    async def send(text: Any = None, seconds: float = 0.05) -> Any:
        return await sleep_echo(seconds, sent=text)

    def fail(reason: Any = None) -> Any:
        raise ValueError(f"refused: {reason}")

    return PythonHost(fetch=fetch, send=send, fail=fail)


async def run(executor: Executor, code: str, **fields: Any) -> program_pb2.ProgramResult:
    program = program_pb2.Program(code=code, client_functions=STUBS, **fields)
    return await executor.run(program, host())


def spans(result: program_pb2.ProgramResult) -> list[tuple[float, float]]:
    """(start, end) of every host call, in seconds since the run started, in dispatch order."""
    return [
        (
            c.started.ToNanoseconds() / 1e9,
            (c.started.ToNanoseconds() + c.duration.ToNanoseconds()) / 1e9,
        )
        for c in result.call_log.calls
    ]


def overlapping(result: program_pb2.ProgramResult) -> bool:
    """Every call started before the first one finished."""
    s = spans(result)
    return all(start < s[0][1] for start, _ in s)


def sequential(result: program_pb2.ProgramResult) -> bool:
    """Each call started after the one before it had finished."""
    s = spans(result)
    return all(s[i + 1][0] >= s[i][1] for i in range(len(s) - 1))


async def test_last_expression_is_the_result(executor: Executor) -> None:
    assert run_result(await run(executor, "x = 20\nx + 22")) == 42
    assert run_result(await run(executor, "x = 1")) is None


async def test_modules_are_preimported(executor: Executor) -> None:
    code = (
        "[math.sqrt(16), json.dumps({'a': 1}), re.findall(r'\\d', 'a1b2'), "
        "statistics.mean([1, 2, 3]), datetime.date(2024, 1, 2).isoformat(), "
        "str(decimal.Decimal('1.1') + 1), str(fractions.Fraction(1, 3) * 3), "
        "list(itertools.islice(itertools.count(), 3)), collections.Counter('aab').most_common(1)]"
    )
    assert run_result(await run(executor, code)) == [
        4.0,
        '{"a": 1}',
        ["1", "2"],
        2,
        "2024-01-02",
        "2.1",
        "1",
        [0, 1, 2],
        [["a", 2]],
    ]


async def test_dicts_allow_attribute_access(executor: Executor) -> None:
    code = """
user = {"name": "ada", "address": {"city": "London"}}
user.age = 36
r = fetch("k1")
[user.name, user.address.city, user["age"], r.item.title, r.key, json.loads('{"a": {"b": 2}}').a.b]
"""
    assert run_result(await run(executor, code)) == ["ada", "London", 36, "t-k1", "k1", 2]


async def test_call_message_binds_arguments_and_resolves_source(executor: Executor) -> None:
    result = await run(executor, "k = 'invoice'\n\nfetch(k, seconds=0)")
    (record,) = result.call_log.calls
    assert record.call.name == "fetch"
    assert {k: py_from_value(v) for k, v in record.call.arguments.fields.items()} == {
        "key": "invoice",
        "seconds": 0,
    }
    assert record.call.source == "fetch(key='invoice', seconds=0)"
    assert record.call.line == 3
    assert run_result(result)["key"] == "invoice"


async def test_ten_independent_calls_overlap(executor: Executor) -> None:
    code = """
a0 = fetch(0); a1 = fetch(1); a2 = fetch(2); a3 = fetch(3); a4 = fetch(4)
a5 = fetch(5); a6 = fetch(6); a7 = fetch(7); a8 = fetch(8); a9 = fetch(9)
[a0.key, a1.key, a2.key, a3.key, a4.key, a5.key, a6.key, a7.key, a8.key, a9.key]
"""
    result = await run(executor, code)
    assert run_result(result) == list(range(10))
    assert len(result.call_log.calls) == 10
    assert overlapping(result)


async def test_calls_in_loops_and_comprehensions_fan_out(executor: Executor) -> None:
    comprehension = await run(executor, "[r.key for r in [fetch(i) for i in range(6)]]")
    assert run_result(comprehension) == list(range(6))
    assert overlapping(comprehension)
    loop = await run(
        executor,
        "out = []\nfor i in range(6):\n    out.append(fetch(i))\nsum(r.key for r in out)",
    )
    assert run_result(loop) == 15
    assert overlapping(loop)


async def test_values_used_inside_the_loop_keep_order(executor: Executor) -> None:
    code = "keys = []\nfor i in range(4):\n    r = fetch(i)\n    keys.append(r.key)\nkeys"
    result = await run(executor, code)
    assert run_result(result) == [0, 1, 2, 3]
    assert sequential(result)


async def test_dependent_chain_waits_for_what_it_needs(executor: Executor) -> None:
    code = "a = fetch('x')\nb = fetch(a.item.title)\nc = fetch(b.item.title)\nc.key"
    result = await run(executor, code)
    assert run_result(result) == "t-t-x"
    assert sequential(result)


async def test_ordered_functions_are_never_overlapped(executor: Executor) -> None:
    code = "send('a')\nsend('b')\nx = fetch(1)\nsend('c')\nx.key"
    result = await run(executor, code, ordered_functions=["send"])
    assert run_result(result) == 1
    sends = [c for c in result.call_log.calls if c.call.name == "send"]
    assert [c.call.arguments["text"] for c in sends] == ["a", "b", "c"]
    ends = [
        (c.started.ToNanoseconds(), c.started.ToNanoseconds() + c.duration.ToNanoseconds())
        for c in sends
    ]
    assert all(ends[i + 1][0] >= ends[i][1] for i in range(len(ends) - 1))
    unordered = await run(executor, "send('a')\nsend('b')\nsend('c')")
    assert overlapping(unordered)


async def test_host_errors_raise_where_the_value_is_used(executor: Executor) -> None:
    result = await run(executor, "r = fail('no')\nx = 1\nr.value")
    assert result.error.kind == program_pb2.ProgramError.KIND_EXCEPTION
    assert result.error.type == "HostError"
    assert "refused: no" in result.error.message
    assert result.error.line == 3
    caught = await run(
        executor, "r = fail('no')\ntry:\n    r.value\nexcept HostError as e:\n    out = str(e)\nout"
    )
    assert run_result(caught) == "refused: no"


async def test_library_functions_live_in_the_root_namespace(executor: Executor) -> None:
    library = """
def lookup(key):
    return fetch(key, seconds=0).item

def shout(text=None): ...
"""
    program = program_pb2.Program(
        code="a = lookup('q')\n[a.title, shout('hi')]",
        library=library,
        client_functions=STUBS,
    )

    async def shout(text: str) -> str:
        return text.upper()

    h = host()
    h.functions["shout"] = shout
    assert run_result(await executor.run(program, h)) == ["t-q", "HI"]


async def test_globals_and_printed_output(executor: Executor) -> None:
    program = program_pb2.Program(code="print('hello', user.name)\nprint(len(items))\nNone")
    program.globals.update({"user": {"name": "ada"}, "items": [1, 2, 3]})
    lines: list[str] = []

    async def on_log(line: program_pb2.LogLine) -> None:
        lines.append(line.text)

    result = await executor.run(program, host(), on_log=on_log)
    assert run_result(result) is None
    assert "\n".join(lines) == "hello ada\n3"  # lines printed close together share a message
    assert [line.text for line in result.call_log.logs] == lines


async def test_unused_calls_still_complete_before_the_run_ends(executor: Executor) -> None:
    result = await run(executor, "send('x')\nsend('y')\n'done'")
    assert run_result(result) == "done"
    assert [c.result.value.struct_value["sent"] for c in result.call_log.calls] == ["x", "y"]


async def test_call_count_limit(executor: Executor) -> None:
    program = program_pb2.Program(
        code="[send(i, seconds=0) for i in range(10)]", client_functions=STUBS
    )
    program.limits.max_calls = 3
    result = await executor.run(program, host())
    assert result.error.kind == program_pb2.ProgramError.KIND_LIMIT
    assert len(result.call_log.calls) == 3


async def test_replay_reproduces_the_run_without_a_host(executor: Executor) -> None:
    code = """
rs = [fetch(i, seconds=0.01) for i in range(3)]
titles = [r.item.title for r in rs]
print(titles)
extra = fetch(titles[0], seconds=0)
{"titles": titles, "extra": extra.key, "lucky": random.randint(1, 1000)}
"""
    original = await run(executor, code)
    logged = replay.load(
        __import__("google.protobuf.json_format", fromlist=["x"]).MessageToJson(original.call_log)
    )
    again = await replay.replay(logged, executor)
    assert again.matches, again.divergences
    assert again.result.value == original.value


async def test_replay_reports_divergence(executor: Executor) -> None:
    original = await run(executor, "fetch(1, seconds=0).key")
    original.call_log.program.code = "fetch(2, seconds=0).key"
    again = await replay.replay(original.call_log, executor)
    assert not again.matches


async def test_replay_in_another_zygote_makes_the_same_calls(executor: Executor) -> None:
    """Set iteration order depends on the string hash seed: a replay on another sandbox process
    (after a restart, say) must still ask for the same things in the same order."""
    code = "names = {'alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta', 'eta', 'theta'}\n"
    code += "[fetch(name, seconds=0).key for name in names]"
    original = await run(executor, code)
    elsewhere = Executor()
    await elsewhere.start()
    try:
        again = await replay.replay(original.call_log, elsewhere)
    finally:
        await elsewhere.stop()
    assert again.matches, again.divergences
    assert again.result.value == original.value


async def test_stubs_declared_in_the_program_keep_their_defaults(executor: Executor) -> None:
    """A stub's spec reaches the runtime as data: a program that rebinds a name a default's
    spelling could resolve to (`set`, `inf`) changes nothing."""
    code = "set = 1\ninf = 2\ndef fetch(key=(1, 'two'), seconds: float = 0): ...\n"
    code += "fetch().key"
    assert run_result(await run(executor, code)) == [1, "two"]


async def test_server_functions_are_callable_and_parsed_once_per_declaration(
    executor: Executor,
) -> None:
    """The service parses the caller's server-function declarations and hands each run the
    result; a declaration seen before is the same functions, and a bad one fails the run."""
    server = "def lookup(q, limit=2): ...\ndef unused(a, *rest, b=None, **more): ...\n"
    program = program_pb2.Program(code="lookup('x').limit + lookup('y', limit=5).limit")
    for _ in range(2):
        result = await executor.run(
            program, PythonHost(lookup=lambda q, limit: {"limit": limit}), server_functions=server
        )
        assert run_result(result) == 7
    broken = await executor.run(program, PythonHost(), server_functions="lookup = 1\n")
    assert broken.error.kind == program_pb2.ProgramError.KIND_VIOLATION
    assert (broken.error.rule, broken.error.line) == ("stub", 1)
    assert "server functions" in broken.error.message
