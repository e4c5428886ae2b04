"""Sandbox test fixtures: one executor (a real zygote with every isolation layer) per session."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from genmesh.runtime.channel import key_interceptors
from genmesh.runtime.values import py_from_value, value_from_py
from genmesh.sandbox.executor import Executor
from genmesh.v1 import program_pb2

KEY = "sandbox-test-key"


class PythonHost:
    """Answers host calls with plain Python functions (sync or async), as a client would."""

    def __init__(self, **functions: Callable[..., Any]) -> None:
        self.functions = functions

    async def call(self, call: program_pb2.FunctionCall) -> program_pb2.FunctionResult:
        fn = self.functions.get(call.name)
        if fn is None:
            return program_pb2.FunctionResult(error=f"unknown function {call.name}")
        kwargs = {k: py_from_value(v) for k, v in call.arguments.fields.items()}
        try:
            value = fn(**kwargs)
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            return program_pb2.FunctionResult(error=str(exc))
        return program_pb2.FunctionResult(value=value_from_py(value))


async def sleep_echo(seconds: float = 0.1, **kwargs: Any) -> Any:
    await asyncio.sleep(seconds)
    return kwargs


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def executor() -> AsyncIterator[Executor]:
    ex = Executor()
    await ex.start()
    yield ex
    await ex.stop()


def run_result(result: program_pb2.ProgramResult) -> Any:
    """The program's value, failing the test with the structured error if there is one."""
    assert not result.HasField("error"), result.error
    return py_from_value(result.value)


@pytest.fixture(scope="session")
def sandbox_port() -> Iterator[int]:
    env = {**os.environ, "GENMESH_INTERNAL_KEY": KEY, "GENMESH_SANDBOX_PORT": "0"}
    env.pop("GENMESH_CONFIG", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "genmesh", "serve", "sandbox"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    port = 0
    for line in process.stdout:
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("ready"):
            port = int(event["port"])
            break
    assert port, "the sandbox service did not start"
    yield port
    process.terminate()
    process.wait(timeout=30)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def channel(sandbox_port: int) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{sandbox_port}", interceptors=key_interceptors(KEY)
    ) as ch:
        yield ch
