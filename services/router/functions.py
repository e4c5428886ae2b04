"""The function registry: trusted async Python functions that sandbox programs may call.

Every public `async def` defined in a `*.py` file of a configured folder is registered under its
name (a module's `__all__`, when present, limits which). The folders are trusted code that runs
in the router, like LOLLMS's personal functions; only the programs calling them are sandboxed.
Arguments are validated against the signature (pydantic), which also gives the JSON schema that
ListFunctions publishes. A file that fails to import, or a function that cannot be described, is
reported at startup and skipped.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf import struct_pb2
from pydantic import TypeAdapter, validate_call

from genmesh.router.agent import ServerFunction
from genmesh.runtime import telemetry
from genmesh.sandbox import dialect
from genmesh.v1 import catalog_pb2

log = logging.getLogger(__name__)
MODULE_PREFIX = "genmesh_functions"


@dataclass(frozen=True)
class RegisteredFunction:
    name: str
    function: ServerFunction
    schema: dict[str, Any]
    source: str

    def info(self) -> catalog_pb2.FunctionInfo:
        parameters = struct_pb2.Struct()
        parameters.update(self.schema)
        stub = dialect.stub_from_function(self.name, self.function)
        return catalog_pb2.FunctionInfo(
            name=self.name,
            description=inspect.getdoc(self.function) or "",
            parameters=parameters,
            signature=dialect.stub_source([stub]).strip(),
        )


class FunctionError(Exception):
    """A function that cannot be offered to programs."""


def describe(name: str, fn: ServerFunction, source: str) -> RegisteredFunction:
    """The function with validated arguments and the JSON schema of its parameters."""
    kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
    if kinds & {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY}:
        raise FunctionError(f"{name}: parameters must be passable by name")
    try:
        schema = TypeAdapter(fn).json_schema()  # type: ignore[arg-type]
        dialect.stub_from_function(name, fn)
        validated = validate_call(fn)
    except Exception as exc:  # pydantic and json raise many types for odd annotations
        raise FunctionError(f"{name}: cannot describe its parameters: {exc}") from None
    return RegisteredFunction(name, validated, schema, source)


def _import(path: Path) -> ModuleType:
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"{MODULE_PREFIX}.{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise FunctionError(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # a broken file must not take the router down
        del sys.modules[module_name]
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise FunctionError(f"{path}: {type(exc).__name__}: {exc}") from None
    return module


def module_functions(module: ModuleType) -> list[tuple[str, ServerFunction]]:
    exported = getattr(module, "__all__", None)
    return [
        (name, fn)
        for name, fn in inspect.getmembers(module, inspect.iscoroutinefunction)
        if fn.__module__ == module.__name__
        and not name.startswith("_")
        and (exported is None or name in exported)
    ]


def _skip(source: str, error: str) -> None:
    log.warning("function skipped", extra={"fields": {"source": source, "error": error}})


class FunctionRegistry:
    """The registered functions by name, in the order found."""

    def __init__(self, functions: Iterable[RegisteredFunction] = ()) -> None:
        self.by_name = {f.name: f for f in functions}

    @classmethod
    def discover(
        cls, folders: Iterable[Path], builtins: Mapping[str, ServerFunction]
    ) -> FunctionRegistry:
        """The mesh's own functions (`builtins`), then every function found in `folders`."""
        found = [describe(name, fn, "mesh") for name, fn in builtins.items()]
        taken = set(builtins)
        for folder in folders:
            if not folder.is_dir():
                _skip(str(folder), "function folder does not exist")
                continue
            for path in sorted(folder.glob("*.py")):
                if path.name.startswith("_"):
                    continue
                try:
                    module = _import(path)
                except FunctionError as exc:
                    _skip(str(path), str(exc))
                    continue
                for name, fn in module_functions(module):
                    if name in taken:
                        _skip(f"{path}:{name}", f"the name '{name}' is already taken")
                        continue
                    try:
                        found.append(describe(name, fn, str(path)))
                    except FunctionError as exc:
                        _skip(f"{path}:{name}", str(exc))
                        continue
                    taken.add(name)
        telemetry.event(log, "functions loaded", names=[f.name for f in found])
        return cls(found)

    def callables(self) -> Mapping[str, ServerFunction]:
        return {name: f.function for name, f in self.by_name.items()}
