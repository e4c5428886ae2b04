"""Values that cross between a sandboxed program and its hosts, checked both ways.

A program's values travel as JSON between the sandbox service and its child, and as
`google.protobuf.Value` between services, so only what both carry unchanged may cross: null,
booleans, finite numbers (one double: an int beyond the double's range cannot cross, one beyond
2**53 arrives rounded), valid Unicode strings (no lone surrogates), lists and string-keyed
objects, at most MAX_DEPTH deep and MAX_BYTES large. Anything else is refused here, naming the
part that cannot cross, rather than failing deep inside protobuf, json or a gRPC stream.

The router, the CLI, the sandbox service and the sandbox child all check with this one module.
The child never converts to protobuf, so protobuf is imported only where a conversion runs: the
sandbox's pre-warmed parent imports this module and forks a child per run, and leaving
protobuf's 5 MB out of it makes every fork and exit cheaper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from google.protobuf import struct_pb2

# Each level of a JSON value costs protobuf up to three message levels (Value, Struct, map
# entry) and the messages around it (response, result, call log, call) take a few more; protobuf
# refuses to parse messages nested beyond 100 levels, so a deeper value could be sent but never
# read back.
MAX_DEPTH = 30
# One value (a host call's arguments or result, a program's result or globals): a quarter of
# the services' 16 MiB message limit, so the message ending a run, which carries them all in
# its call log, can still be sent.
MAX_BYTES = 4 << 20
# Integral numbers below this cross as ints; larger ones are doubles and come back as floats.
EXACT_INTS = 2**53


class InvalidValueError(ValueError):
    """A value that cannot cross; `path` names the part (`result.rows[3].name`)."""

    def __init__(self, problem: str, path: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" if self.path else self.problem

    def under(self, step: str | int) -> InvalidValueError:
        """The same problem, seen from the container (or root name) holding the part."""
        if isinstance(step, int):
            step = f"[{step}]"
        return type(self)(self.problem, f"{step}{self.path}")


class ValueTooLargeError(InvalidValueError):
    """A value over MAX_BYTES: a resource limit rather than a malformed value."""


class Budget:
    """A running estimate of a value's encoded size while it is converted: a value far over
    MAX_BYTES (millions of small items a few bytes of JSON each, and several times that as
    protobuf) is refused after about MAX_BYTES of work instead of after building all of it."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_BYTES

    def spend(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise ValueTooLargeError(f"more than the limit of {MAX_BYTES} bytes")


# Estimated encoded bytes of a scalar (a double with its tags) and of a string's or key's tags.
SCALAR_BYTES = 11
TAG_BYTES = 4


def member(name: str) -> str:
    """The path step to an object member: `.name`, or `['odd key']`."""
    return f".{name}" if name.isidentifier() and name.isascii() else f"[{name!r}]"


def text(value: str) -> str:
    """`value` unchanged if it is valid Unicode; raises on a lone surrogate."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidValueError(
                f"the string has a lone surrogate at index {exc.start}, which is not Unicode"
            ) from None
    return value


def display(value: str) -> str:
    """Text meant for people (printed lines, messages, call sources): a lone surrogate becomes
    '?' instead of failing the run."""
    return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")


def number(value: int | float) -> int | float:
    """`value` if a double can carry it; raises for non-finite floats and huge ints."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValueError(f"{value} is not a finite number")
    else:
        try:
            float(value)
        except OverflowError:
            raise InvalidValueError(
                f"an integer of {value.bit_length()} bits is beyond the range of a double"
            ) from None
    return value


def key(value: Any) -> str:
    """An object key: a string, or a number, boolean or None as its `str`."""
    if isinstance(value, str):
        return text(value)
    if value is None or isinstance(value, bool | int | float):
        return str(value)
    raise InvalidValueError(f"a key of type {type(value).__name__} cannot cross")


def nest(depth: int) -> int:
    """The depth one level further in; raises beyond MAX_DEPTH."""
    if depth >= MAX_DEPTH:
        raise InvalidValueError(f"nested deeper than {MAX_DEPTH} levels")
    return depth + 1


def check(value: Any, path: str = "value") -> None:
    """Raises InvalidValueError naming the part of plain Python `value` that cannot cross."""
    try:
        _fill(None, value, 0, Budget())
    except InvalidValueError as exc:
        raise exc.under(path) from None


def value_from_py(value: Any, path: str = "value") -> struct_pb2.Value:
    """Plain Python (JSON-like; tuples count as lists) as a checked protobuf Value."""
    from google.protobuf import struct_pb2

    out = struct_pb2.Value()
    try:
        _fill(out, value, 0, Budget())
    except InvalidValueError as exc:
        raise exc.under(path) from None
    _fits(out, path)
    return out


def struct_from_py(value: Mapping[str, Any], path: str = "value") -> struct_pb2.Struct:
    """A mapping (a call's arguments, a program's globals) as a checked protobuf Struct."""
    return value_from_py(dict(value), path).struct_value


def py_from_value(value: struct_pb2.Value, path: str = "value") -> Any:
    """A protobuf Value as checked plain Python, with integral numbers as ints."""
    _fits(value, path)
    try:
        return _plain(value, 0)
    except InvalidValueError as exc:
        raise exc.under(path) from None


def py_from_struct(value: struct_pb2.Struct, path: str = "value") -> dict[str, Any]:
    """A protobuf Struct as a checked dict."""
    from google.protobuf import struct_pb2

    wrapped = struct_pb2.Value()
    wrapped.struct_value.CopyFrom(value)
    result: dict[str, Any] = py_from_value(wrapped, path)
    return result


def _fits(value: struct_pb2.Value, path: str) -> None:
    size = value.ByteSize()
    if size > MAX_BYTES:
        raise ValueTooLargeError(f"{size} bytes is more than the limit of {MAX_BYTES}", path)


def _fill(out: struct_pb2.Value | None, value: Any, depth: int, budget: Budget) -> None:
    """Checks `value` and copies it into `out`; with no `out`, only checks (no protobuf)."""
    budget.spend(len(value) + TAG_BYTES if isinstance(value, str) else SCALAR_BYTES)
    if value is None:
        if out is not None:
            out.null_value = cast("struct_pb2.NullValue.ValueType", 0)  # NULL_VALUE, its one value
    elif isinstance(value, bool):
        if out is not None:
            out.bool_value = value
    elif isinstance(value, int | float):
        checked = number(value)
        if out is not None:
            out.number_value = checked
    elif isinstance(value, str):
        checked_text = text(value)
        if out is not None:
            out.string_value = checked_text
    elif isinstance(value, dict):
        inner = nest(depth)
        fields = None
        if out is not None:
            out.struct_value.SetInParent()
            fields = out.struct_value.fields
        for k, v in value.items():
            try:
                name = key(k)
            except InvalidValueError as exc:
                raise exc.under(f"[{k!r}]") from None
            budget.spend(len(name) + TAG_BYTES)
            try:
                _fill(None if fields is None else fields[name], v, inner, budget)
            except InvalidValueError as exc:
                raise exc.under(member(name)) from None
    elif isinstance(value, list | tuple):
        inner = nest(depth)
        items = None
        if out is not None:
            out.list_value.SetInParent()
            items = out.list_value.values
        for i, v in enumerate(value):
            try:
                _fill(None if items is None else items.add(), v, inner, budget)
            except InvalidValueError as exc:
                raise exc.under(i) from None
    else:
        raise InvalidValueError(f"a value of type {type(value).__name__} cannot cross")


def _plain(value: struct_pb2.Value, depth: int) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        n = value.number_value
        number(n)
        return int(n) if n.is_integer() and abs(n) < EXACT_INTS else n
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        inner = nest(depth)
        out = {}
        for k, v in value.struct_value.fields.items():
            try:
                out[k] = _plain(v, inner)
            except InvalidValueError as exc:
                raise exc.under(member(k)) from None
        return out
    if kind == "list_value":
        inner = nest(depth)
        items = []
        for i, v in enumerate(value.list_value.values):
            try:
                items.append(_plain(v, inner))
            except InvalidValueError as exc:
                raise exc.under(i) from None
        return items
    return None
