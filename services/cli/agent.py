"""`genmesh agent run`: runs a program through the router, answering its calls from HOST.py.

HOST.py is the caller's own trusted code: its public functions become the program's client
functions (their signatures are the stubs) and run here, concurrently, when the program calls them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import click
import grpc
from google.protobuf import json_format

from genmesh.client import DEFAULT_ADDRESS, Client
from genmesh.runtime.values import py_from_struct, py_from_value, value_from_py
from genmesh.sandbox import dialect
from genmesh.v1 import agent_pb2, program_pb2


def load_host_functions(path: Path) -> dict[str, Callable[..., Any]]:
    """The public functions defined in HOST.py (not those it imports)."""
    spec = importlib.util.spec_from_file_location("genmesh_host_functions", path)
    if spec is None or spec.loader is None:
        raise click.BadParameter(f"cannot load {path}", param_hint="--host-functions")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {
        name: fn
        for name, fn in vars(module).items()
        if inspect.isfunction(fn) and fn.__module__ == module.__name__ and not name.startswith("_")
    }


async def answer(
    functions: dict[str, Callable[..., Any]], call: program_pb2.FunctionCall
) -> program_pb2.FunctionResult:
    """Calls a host function; sync ones run in a thread so calls still overlap."""
    fn = functions.get(call.name)
    if fn is None:
        return program_pb2.FunctionResult(call_id=call.call_id, error=f"no function {call.name}")
    try:
        kwargs = py_from_struct(call.arguments, "arguments")
        if inspect.iscoroutinefunction(fn):
            value = await fn(**kwargs)
        else:
            value = await asyncio.to_thread(fn, **kwargs)
        return program_pb2.FunctionResult(
            call_id=call.call_id, value=value_from_py(value, "result")
        )
    except Exception as exc:
        return program_pb2.FunctionResult(
            call_id=call.call_id, error=f"{type(exc).__name__}: {exc}"
        )


async def run_program(
    client: Client,
    program: program_pb2.Program,
    functions: dict[str, Callable[..., Any]],
    on_log: Callable[[str], None],
) -> program_pb2.ProgramResult:
    """Runs `program` on the router's AgentService.Run, answering client calls with `functions`."""
    requests: asyncio.Queue[agent_pb2.RunRequest] = asyncio.Queue()
    await requests.put(agent_pb2.RunRequest(start=agent_pb2.RunStart(program=program)))

    async def feed() -> AsyncIterator[agent_pb2.RunRequest]:
        while True:
            yield await requests.get()

    async def reply(call: program_pb2.FunctionCall) -> None:
        await requests.put(agent_pb2.RunRequest(result=await answer(functions, call)))

    tasks: set[asyncio.Task[None]] = set()
    stream = client.agent.Run(feed(), metadata=client.metadata)
    try:
        async for response in stream:
            kind = response.WhichOneof("message")
            if kind == "call":
                task = asyncio.create_task(reply(response.call))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif kind == "log":
                on_log(response.log.text)
            elif kind == "result":
                return response.result
    finally:
        stream.cancel()
    raise click.ClickException("the router ended the run without a result")


def report(result: program_pb2.ProgramResult) -> dict[str, Any]:
    """The --json document: result, structured error and the call log with start/end per call."""
    calls = []
    for record in result.call_log.calls:
        started = record.started.ToNanoseconds() / 1e6
        calls.append(
            {
                "call_id": record.call.call_id,
                "source": record.call.source,
                "line": record.call.line,
                "started_ms": round(started, 3),
                "ended_ms": round(started + record.duration.ToNanoseconds() / 1e6, 3),
                "result": json_format.MessageToDict(record.result),
            }
        )
    return {
        "result": py_from_value(result.value) if result.HasField("value") else None,
        "error": json_format.MessageToDict(result.error) if result.HasField("error") else None,
        "calls": calls,
        "duration_ms": round(result.duration.ToNanoseconds() / 1e6, 3),
        "call_log": json_format.MessageToDict(result.call_log),
    }


def print_error(error: program_pb2.ProgramError) -> None:
    kind = program_pb2.ProgramError.Kind.Name(error.kind).removeprefix("KIND_").lower()
    where = f" (line {error.line})" if error.line else ""
    rule = f" [rule: {error.rule}]" if error.rule else ""
    click.echo(f"error: {kind}: {error.type}: {error.message}{where}{rule}", err=True)


@click.group()
def agent() -> None:
    """Run LLM-written programs in the sandbox."""


@agent.command("run")
@click.option("--address", default=DEFAULT_ADDRESS, envvar="GENMESH_ADDRESS", show_default=True)
@click.option("--api-key", envvar="GENMESH_API_KEY", default=None)
@click.option("--library", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--host-functions", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--ordered", multiple=True, help="A host function never reordered (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print result, call log and error as JSON.")
@click.argument("program_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def run(
    address: str,
    api_key: str | None,
    library: Path | None,
    host_functions: Path | None,
    ordered: tuple[str, ...],
    as_json: bool,
    program_file: Path,
) -> None:
    """Run PROGRAM_FILE through the router; HOST.py's functions answer its calls."""
    functions = load_host_functions(host_functions) if host_functions else {}
    stubs = [dialect.stub_from_function(name, fn) for name, fn in functions.items()]
    program = program_pb2.Program(
        code=program_file.read_text(),
        library=library.read_text() if library else "",
        client_functions=dialect.stub_source(stubs),
        ordered_functions=list(ordered),
    )

    def on_log(text: str) -> None:
        if not as_json:
            click.echo(text)

    async def go() -> program_pb2.ProgramResult:
        async with Client(address, api_key) as client:
            return await run_program(client, program, functions, on_log)

    try:
        result = asyncio.run(go())
    except grpc.aio.AioRpcError as exc:
        click.echo(f"error: {exc.code().name}: {exc.details()}", err=True)
        raise SystemExit(1) from None
    if as_json:
        click.echo(json.dumps(report(result), indent=2))
    elif not result.HasField("error"):
        click.echo(json.dumps(py_from_value(result.value), indent=2))
    if result.HasField("error"):
        if not as_json:
            print_error(result.error)
        sys.exit(1)
