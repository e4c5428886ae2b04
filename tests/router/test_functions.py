"""The function registry: discovery from folders, schemas in the catalog, calls from sandbox
programs through a real sandbox service, and broken files skipped at startup."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format

from genmesh.client import Client
from genmesh.router.settings import ZOO
from genmesh.runtime.values import py_from_value
from tests.support import ServiceProcess, client_fixture, echo_binding, router_config, serve

GOOD = '''
import asyncio

__all__ = ["add", "greet", "unlisted_sync"]


async def add(a: int, b: int = 1) -> int:
    """Adds two integers."""
    await asyncio.sleep(0)
    return a + b


async def greet(name: str, *, excited: bool = False) -> str:
    """Greets someone."""
    return f"hello {name}" + ("!" if excited else "")


def unlisted_sync() -> None:
    """Not async: not a server function."""


async def not_exported() -> None:
    """Left out by __all__."""
'''


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("functions")
    files = {
        "good.py": GOOD,
        "syntax.py": "async def oops(:\n    pass\n",
        "crashes.py": "raise RuntimeError('no config for this module')\n",
        "clash.py": "async def generate_text(prompt_text: str) -> str:\n    return 'mine'\n",
        "varargs.py": "async def spread(*values: int) -> int:\n    return sum(values)\n",
        "_private.py": "raise SystemExit('never imported')\n",
    }
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text))
    return root


@pytest.fixture(scope="module")
def mesh(ttt: ServiceProcess, sandbox: ServiceProcess, folder: Path) -> Iterator[ServiceProcess]:
    folders = [str(folder), str(ZOO / "functions"), str(folder / "missing")]
    config = router_config(
        [echo_binding(ttt.address)], sandbox_address=sandbox.address, function_folders=folders
    )
    yield from serve("router", config)


client = client_fixture("mesh")


async def test_functions_are_listed_with_schemas(client: Client) -> None:
    listed = {f.name: f for f in await client.list_functions()}
    assert list(listed) == [
        "generate_text",
        "generate_image",
        "speak",
        "transcribe",
        "add",
        "greet",
        "convert_length",
        "word_count",
    ]
    add = listed["add"]
    assert add.description == "Adds two integers."
    assert add.signature == "def add(a, b=1): ..."
    schema = json_format.MessageToDict(add.parameters)
    assert schema["required"] == ["a"]
    assert schema["properties"]["a"]["type"] == "integer"
    assert schema["properties"]["b"] == {"default": 1, "title": "B", "type": "integer"}
    assert listed["greet"].signature == "def greet(name, *, excited=False): ..."
    units = json_format.MessageToDict(listed["convert_length"].parameters)
    assert "km" in units["properties"]["from_unit"]["enum"]


def test_broken_files_are_reported_and_skipped(mesh: ServiceProcess) -> None:
    skipped = {Path(e["source"]).name: e["error"] for e in mesh.events("function skipped")}
    assert set(skipped) == {
        "syntax.py",
        "crashes.py",
        "clash.py:generate_text",
        "varargs.py:spread",
        "missing",
    }
    assert "SyntaxError" in skipped["syntax.py"]
    assert "RuntimeError: no config for this module" in skipped["crashes.py"]
    assert "already taken" in skipped["clash.py:generate_text"]
    assert "passable by name" in skipped["varargs.py:spread"]


async def test_programs_call_registered_functions(client: Client) -> None:
    result = await client.execute(
        "[add(2, b=3), add(40), greet('mesh', excited=True), convert_length(1, 'km', 'm'),"
        " generate_text('from the mesh')]"
    )
    assert not result.HasField("error"), result.error
    assert py_from_value(result.value) == [5, 41, "hello mesh!", 1000.0, "from the mesh"]
    assert [c.call.name for c in result.call_log.calls] == [
        "add",
        "add",
        "greet",
        "convert_length",
        "generate_text",
    ]


async def test_arguments_are_checked_against_the_signature(client: Client) -> None:
    # The failure surfaces where the program uses the value (calls run in parallel).
    result = await client.execute(
        "try:\n    out = add('two') + 1\nexcept Exception as exc:\n    out = str(exc)\nout"
    )
    assert not result.HasField("error"), result.error
    message = py_from_value(result.value)
    assert "ValidationError" in message and "valid integer" in message
