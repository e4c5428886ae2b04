"""The child-side runtime of the dialect: pending host calls, attribute dicts, the guard, limits.

A host call sends its message to the service at once and returns a `Pending` placeholder; the
rewritten program resolves it (`__r`) only where the value is used, reading replies off the pipe
in whatever order the host finishes them. One thread, no async: overlap comes from sending calls
before waiting on any of them.

Every attribute the program reads or writes passes the guard (`__attr`, `__store`), which applies
the rules of `policy.py`; the modules the program sees are the views that file lists.
"""

from __future__ import annotations

import _string  # type: ignore[import-not-found]  # the parser behind str.format
import base64
import builtins
import contextlib
import functools
import inspect
import json
import marshal
import os
import re
import resource
import string
import sys
import time
import traceback
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from genmesh.runtime import values
from genmesh.sandbox import dialect, policy, wire
from genmesh.sandbox.dialect import LIBRARY_FILE, PROGRAM_FILE, RESULT_NAME

DIALECT_FILES = frozenset({PROGRAM_FILE, LIBRARY_FILE})

# Container methods that store values without looking at them: pending calls may pass through,
# so `results.append(search(q))` in a loop fans out instead of waiting each time.
_PASS_METHODS = frozenset({"append", "insert", "extend", "setdefault", "update"})


class HostError(Exception):
    """A host function answered with an error; raised where its value is used."""


class SandboxStop(BaseException):
    """Ends the run; a BaseException so `except Exception` in a program cannot swallow it."""

    kind = "crashed"
    rule = ""  # the broken rule of policy.RULES, for violations


class LimitExceeded(SandboxStop):
    kind = "limit"


class Violation(SandboxStop):
    """The program broke a rule of `policy.py` at run time."""

    kind = "violation"

    def __init__(self, rule: str, subject: str) -> None:
        super().__init__(f"{subject} is refused: {policy.RULES[rule]}")
        self.rule = rule


def _refuse(rule: str, subject: str) -> NoReturn:
    """Stops the run for good: should a `finally` swallow the violation, the guard, the next call
    and the end of the run raise it again."""
    RUN.stop(Violation(rule, subject))


# The stop of a refusal that has no stack left, built in advance. At the recursion limit, calling
# `_refuse` or building a Violation raises RecursionError, which the program could catch and go
# on; so a refusal records this on RUN before anything that needs a frame, and the guard ends the
# run with it when its own checks run out of stack (it cannot tell what it would have refused).
_NO_STACK = Violation("guard-stack", "an attribute access at the recursion limit")


def _dict_key(mapping: Dict, name: str) -> Any:
    """An attribute dict's key read as an attribute (no dict method has that name)."""
    if name.startswith("_"):
        raise AttributeError(name)  # C code probing for protocols, e.g. `__fspath__`
    try:
        return mapping[name]
    except KeyError:
        raise AttributeError(f"no key or attribute {name!r}") from None


class Dict(dict[Any, Any]):
    """A dict whose keys can also be read and written as attributes, like JavaScript objects.

    Dict methods win over keys, so a host value cannot shadow `keys` or `get`."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return _dict_key(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


class Pending:
    """The placeholder for a host call's value until it is used."""

    __slots__ = ("_done", "_error", "_id", "_value")

    def __init__(self, call_id: int) -> None:
        self._id = call_id
        self._done = False
        self._value: Any = None
        self._error: str | None = None

    def _get(self) -> Any:
        if not self._done:
            RUN.wait_for(self)
        if self._error is not None:
            raise HostError(self._error)
        return self._value

    def __getattr__(self, name: str) -> Any:
        """Reached from C code only: the program's own reads resolve in the guard first."""
        if name.startswith("_"):
            raise AttributeError(name)
        return get_attribute(self._get(), name)

    def __repr__(self) -> str:
        return repr(self._get())


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: Pending, *args: Any) -> Any:
        return getattr(self._get(), name)(*args)

    method.__name__ = name
    return method


# A pending value that escapes the rewrite (into a builtin that calls back, say) still behaves
# like its value: every operation resolves it first.
for _name in [
    "add",
    "radd",
    "sub",
    "rsub",
    "mul",
    "rmul",
    "truediv",
    "rtruediv",
    "floordiv",
    "rfloordiv",
    "mod",
    "rmod",
    "pow",
    "rpow",
    "neg",
    "pos",
    "abs",
    "invert",
    "and",
    "rand",
    "or",
    "ror",
    "xor",
    "rxor",
    "lshift",
    "rlshift",
    "rshift",
    "rrshift",
    "matmul",
    "rmatmul",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "hash",
    "bool",
    "str",
    "int",
    "float",
    "index",
    "round",
    "format",
    "len",
    "iter",
    "contains",
    "getitem",
    "reversed",
    "call",
]:
    setattr(Pending, f"__{_name}__", _delegate(f"__{_name}__"))


class HostFunction:
    """A stub-declared function: calling it sends a message to the host and does not wait. Its
    signature is built on the first call: a run is handed every server function and calls few."""

    __slots__ = ("_built", "_name", "_ordered", "_spec")

    def __init__(self, spec: dict[str, Any], ordered: bool) -> None:
        self._name = str(spec["name"])
        self._spec = spec
        self._built: inspect.Signature | None = None
        self._ordered = ordered

    @property
    def _signature(self) -> inspect.Signature:
        if self._built is None:
            params = []
            for p in self._spec["params"]:
                kind = inspect._ParameterKind[p["kind"]]
                default = p.get("default", inspect.Parameter.empty)
                params.append(inspect.Parameter(p["name"], kind, default=default))
            self._built = inspect.Signature(params)
        return self._built

    def __call__(self, *args: Any, **kwargs: Any) -> Pending:
        return RUN.dispatch(self._name, self._signature, self._ordered, args, kwargs)

    def __repr__(self) -> str:
        return f"<host function {self._name}{self._signature}>"


def to_json(value: Any, root: str = "arguments") -> Any:
    """A JSON-compatible copy of a program value on its way out; unknown types become their
    `str`. What cannot cross the wire (see `values`) raises InvalidValueError where the program
    sent it, naming the part under `root`."""
    try:
        return _json(value, 0, values.Budget())
    except values.InvalidValueError as exc:
        raise exc.under(root) from None


def _json(value: Any, depth: int, budget: values.Budget) -> Any:
    budget.spend(len(value) + values.TAG_BYTES if type(value) is str else values.SCALAR_BYTES)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return values.number(value)
    if isinstance(value, str):
        return values.text(value)
    if isinstance(value, Pending):
        return _json(value._get(), depth, budget)
    if isinstance(value, dict):
        inner = values.nest(depth)
        out = {}
        for k, v in value.items():
            try:
                name = values.text(k if isinstance(k, str) else str(k))
            except values.InvalidValueError as exc:
                raise exc.under(f"[{k!r}]") from None
            budget.spend(len(name) + values.TAG_BYTES)
            try:
                out[name] = _json(v, inner, budget)
            except values.InvalidValueError as exc:
                raise exc.under(values.member(name)) from None
        return out
    if isinstance(value, list | tuple | set | frozenset) or type(value).__name__ == "deque":
        inner = values.nest(depth)
        items = []
        for i, v in enumerate(value):
            try:
                items.append(_json(v, inner, budget))
            except values.InvalidValueError as exc:
                raise exc.under(i) from None
        return items
    shown = str(value)
    budget.spend(len(shown))
    return values.text(shown)


def resolve(value: Any) -> Any:
    """`__r`: the value itself, waiting for it if it is a pending host call."""
    if type(value) is Pending:
        return value._get()
    return value


def _deep(value: Any, seen: set[int]) -> Any:
    """Resolves pending values inside containers in place, for callees outside the dialect."""
    if type(value) is Pending:
        value = value._get()
    if isinstance(value, list | dict | tuple) and id(value) not in seen:
        seen.add(id(value))
        if isinstance(value, list):
            for i, item in enumerate(value):
                value[i] = _deep(item, seen)
        elif isinstance(value, dict):
            for key, item in value.items():
                value[key] = _deep(item, seen)
        elif any(isinstance(item, Pending | list | dict | tuple) for item in value):
            value = tuple(_deep(item, seen) for item in value)
    return value


class ModuleView(types.ModuleType):
    """A pre-imported module as programs see it: only the members `policy.MODULES` lists."""


def _no_member(module: str) -> Callable[[str], Any]:
    """A view's module `__getattr__` (PEP 562), called only for members it does not hold."""

    def missing(name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)  # C code probing, e.g. `__spec__` for the repr
        RUN.stopped = _NO_STACK  # the refusal below may have no stack left
        _refuse("module-member", f"{module}.{name}")

    return missing


class FormatMethod:
    """`str.format`/`str.format_map` as the guard hands them out when their template (bound, or
    the first argument of the unbound method) walks attributes: the walks go through the guard
    when the method runs, whoever calls it (`map`, `functools.partial`, a json `default`)."""

    __slots__ = ("_mapping", "_template")

    def __init__(self, template: str | None, mapping: bool) -> None:
        self._template = template
        self._mapping = mapping

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        template = self._template
        if template is None:
            if not args or not isinstance(args[0], str):
                raise TypeError("str.format needs a string template as its first argument")
            template, *rest = args
            args = tuple(rest)
        if self._mapping:
            (mapping,) = args
            if not _walks(template):
                return template.format_map(mapping)
            return _FORMATTER.vformat(template, (), mapping)
        if not _walks(template):
            return template.format(*args, **kwargs)
        return _FORMATTER.vformat(template, args, kwargs)

    def __repr__(self) -> str:
        method = "format_map" if self._mapping else "format"
        return f"<method {method} of str>"


def _walks(template: str) -> bool:
    """Whether a replacement field of `template` (nested specs too) reads an attribute."""
    if "." not in template:
        return False
    try:
        fields = list(_string.formatter_parser(template))
    except ValueError:
        return True  # str.format would walk the fields before the error: take the guarded path
    return any(
        field is not None and ("." in field or (spec and _walks(spec)))
        for _, field, spec, _ in fields
    )


class _GuardedFormatter(string.Formatter):
    """Formats like `str.format`, reading each attribute of a replacement field via the guard."""

    def get_field(
        self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[Any, str | int]:
        first, rest = _string.formatter_field_name_split(field_name)
        value = self.get_value(first, args, kwargs)
        for is_attribute, key in rest:
            value = get_attribute(value, key) if is_attribute else resolve(value)[key]
        return value, first


_FORMATTER = _GuardedFormatter()

_PLAIN = policy.Read.PLAIN
_DICT = policy.Read.DICT
_EXCEPTION = policy.Read.EXCEPTION
_NEVER = policy.Read.NEVER
_AS_IS = policy.Value.AS_IS
_METHOD = policy.Value.METHOD
_REFUSED = policy.Value.REFUSED
_BUILTIN = types.BuiltinFunctionType
_FORMAT = frozenset(policy.FORMAT_ATTRIBUTES)

# How the guard reads the runtime's own kinds of objects: attribute dicts read keys, module views
# are plain objects (they hold only reviewed members), and nothing else of the runtime has public
# attributes. Every other kind is ruled by policy.read_rule.
_RUNTIME_READS: dict[type, policy.Read] = {Dict: _DICT, ModuleView: _PLAIN}
# The kinds read plainly, filled in as they turn up: the fast path's one lookup per kind (it knows
# the runtime's kinds and `str` by name; exceptions take the slow path every time).
_PLAIN_KINDS: set[type] = set()
_DICT_METHODS = frozenset(name for name in dir(dict) if not name.startswith("_"))
# Attribute names that passed policy.attribute_rule: one set lookup instead of the checks.
_ALLOWED_NAMES: set[str] = set()
# How the guard hands out each kind of value read, filled in from policy.value_rule; the kinds
# handed out as they are also go in a set, the fast path's one lookup per value.
_VALUES: dict[type, policy.Value] = {}
_HANDED_OUT: set[type] = set()
_WRITABLE = {kind: frozenset(names) for kind, names in policy.WRITABLE_ATTRIBUTES.items()}
_UNREAD = object()  # the value of an access the fast path has not read


def _subject(obj: Any) -> tuple[Any, type]:
    """The object an attribute access is about, a pending host value resolved, and its kind; a
    stopped run stops here, whatever caught its stop before."""
    if RUN.stopped is not None:
        raise RUN.stopped
    if type(obj) is Pending:
        obj = obj._get()
    return obj, type(obj)


def get_attribute(obj: Any, name: str) -> Any:
    """`__attr`, the guard: every attribute read of a program (and of C code on its behalf).

    Resolves a pending value, checks the name and the kind of object by `policy.py`, then judges
    the value read, whatever object it came from: str's format methods come back as
    `FormatMethod`s when their template walks attributes, descriptors not at all. The fast path
    knows the name, the kind of object and the kind of value (a module view's members are
    reviewed, an attribute dict's keys are the program's own values) and calls nothing that could
    run out of stack; anything else takes `_guard`, and should that run out of stack, the guard
    refuses: the run ends with `_NO_STACK`."""
    obj, kind = _subject(obj)
    value = _UNREAD
    if name in _ALLOWED_NAMES:
        if kind is ModuleView:
            return getattr(obj, name)  # a reviewed member (policy.MODULES), or a refusal
        if kind in _PLAIN_KINDS:
            value = getattr(obj, name)
            handed = type(value)
            if handed is _BUILTIN:  # a method: str.format if bound to a string (or a subclass)
                if not isinstance(value.__self__, str):
                    return value
            elif handed in _HANDED_OUT:
                return value
        elif kind is Dict:
            return getattr(obj, name) if name in _DICT_METHODS else _dict_key(obj, name)
        elif kind is str:
            value = getattr(obj, name)
            if name not in _FORMAT or "." not in obj:  # no dot, no attribute path (`_walks`)
                return value
    try:
        return _guard(obj, kind, name, value)
    except RecursionError:
        RUN.stopped = _NO_STACK
        raise _NO_STACK from None


def _guard(obj: Any, kind: type, name: str, value: Any) -> Any:
    """The guard's slow path: the checks of a name or kind of object not seen yet (and the read
    they allow), then the judgement of a value not handed out as it is."""
    if value is _UNREAD:
        if name not in _ALLOWED_NAMES:
            rule = policy.attribute_rule(name)
            if rule is not None:
                _refuse(rule, f"attribute {name!r}")
            _ALLOWED_NAMES.add(name)
        read = _RUNTIME_READS.get(kind) or policy.read_rule(kind)
        if read is _NEVER:
            _refuse("unreadable-type", f"attribute {name!r} of a {kind.__name__}")
        if read is _EXCEPTION and name not in policy.EXCEPTION_ATTRIBUTES:
            _refuse("exception-attribute", f"attribute {name!r} of {kind.__name__}")
        if read is _PLAIN:
            _PLAIN_KINDS.add(kind)
        if read is _DICT:
            return getattr(obj, name) if name in _DICT_METHODS else _dict_key(obj, name)
        value = getattr(obj, name)
    handed = type(value)
    judged = _VALUES.get(handed)
    if judged is None:
        judged = _VALUES[handed] = policy.value_rule(handed)
        if judged is _AS_IS:
            _HANDED_OUT.add(handed)
    if judged is _REFUSED:
        _refuse("descriptor", f"attribute {name!r} (a {handed.__name__})")
    if judged is _METHOD and value.__name__ in _FORMAT:
        mapping = value.__name__ == "format_map"
        if handed is not _BUILTIN:  # unbound: str.format, whichever class or object held it
            if issubclass(value.__objclass__, str):
                return FormatMethod(None, mapping)
        elif isinstance(value.__self__, str) and _walks(value.__self__):
            return FormatMethod(value.__self__, mapping)
    return value


def store_target(obj: Any, name: str) -> Any:
    """`__store`: the object of an attribute write or delete, if the policy lets it take one."""
    obj, kind = _subject(obj)
    if kind is Dict or (kind in _WRITABLE and name in _WRITABLE[kind]):
        return obj
    RUN.stopped = _NO_STACK  # the refusal below may have no stack left
    _refuse("attribute-store", f"attribute {name!r} of a {kind.__name__}")


def call(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """`__call`: every call in a program. Host functions dispatch; others see resolved values.

    It checks nothing: every callable a program can hold is safe to call from C (policy.py)."""
    run = RUN
    if run.stopped is not None:
        raise run.stopped
    kind = type(fn)
    if kind is Pending:
        fn = fn._get()
        kind = type(fn)
    if kind is HostFunction:
        return fn(*args, **kwargs)
    if kind is types.FunctionType and fn.__code__.co_filename in DIALECT_FILES:
        return fn(*args, **kwargs)
    if kind is types.BuiltinMethodType:
        owner = fn.__self__
        if fn.__name__ in _PASS_METHODS and isinstance(owner, list | dict):
            return fn(*args, **kwargs)
        if run.pending_made:
            _deep(owner, set())
    if run.pending_made:
        seen: set[int] = set()
        args = tuple(_deep(a, seen) for a in args)
        kwargs = {k: _deep(v, seen) for k, v in kwargs.items()}
    return fn(*args, **kwargs)


def _program_line() -> int:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename in DIALECT_FILES:
            return frame.f_lineno or 0
        frame = frame.f_back  # type: ignore[assignment]
    return 0


# Printed lines travel in batches: a batch leaves once it holds LOG_BATCH_BYTES, when a line is
# printed LOG_BATCH_SECONDS or more after the last batch left, and whenever the child sends a
# call, waits for an answer or ends, so output keeps its place among the calls and never waits
# behind a blocked child. (One thread and no timers: lines printed just before a long stretch of
# silent computation leave when it ends.)
LOG_BATCH_BYTES = 32 << 10
LOG_BATCH_SECONDS = 0.02


class Run:
    """One program run in this child: the pipe to the service, pending calls and limits."""

    def __init__(self) -> None:
        self.fd = -1
        self.next_id = 1
        self.pending: dict[int, Pending] = {}
        self.pending_made = False
        self.last_ordered: Pending | None = None
        self.max_calls = 0
        self.max_output = 0
        self.max_lines = 0
        self.output = 0
        self.lines = 0
        self.batch: list[str] = []  # printed lines not sent yet
        self.batch_bytes = 0
        self.partial: list[str] = []  # the pieces of the line being printed
        self.batch_sent = 0.0  # when the last batch left
        self.stopped: SandboxStop | None = None

    def send(self, message: dict[str, Any]) -> None:
        """Sends `message`, behind the printed lines still waiting (in one write)."""
        frame = self._encode(message)  # first: a message too large must not lose the batch
        wire.write_all(self.fd, self._batch_frame() + frame)

    def receive(self) -> dict[str, Any]:
        """The service's next message; printed lines still waiting leave first, as this blocks."""
        if self.batch:
            wire.write_all(self.fd, self._batch_frame())
        body = wire.read_exact(self.fd, wire.size(wire.read_exact(self.fd, wire.HEADER.size)))
        return wire.decode(body, object_hook=Dict)

    def _encode(self, message: dict[str, Any]) -> bytes:
        try:
            return wire.encode(message)
        except wire.FrameError as exc:
            self.stop(LimitExceeded(str(exc)))

    def _batch_frame(self) -> bytes:
        """The frame of the printed lines waiting, which it takes out of the batch."""
        if not self.batch:
            return b""
        text = "\n".join(self.batch)
        self.batch.clear()
        self.batch_bytes = 0
        self.batch_sent = time.monotonic()
        return self._encode({"t": "log", "text": text})

    def linger(self) -> None:
        """Waits for the service to hang up (it kills this child once it has read "done").
        Exiting first, with the service's late call results still unread here, would reset
        the connection, and the service could lose the "done" message it had not read yet."""
        with contextlib.suppress(OSError):
            while os.read(self.fd, 1 << 16):
                pass

    def stop(self, error: SandboxStop) -> NoReturn:
        self.stopped = error
        raise error

    def dispatch(
        self,
        name: str,
        signature: inspect.Signature,
        ordered: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Pending:
        if self.stopped is not None:
            raise self.stopped
        if self.next_id > self.max_calls:
            self.stop(LimitExceeded(f"more than {self.max_calls} host calls"))
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = to_json(_deep(dict(bound.arguments), set()))
        if ordered and self.last_ordered is not None and not self.last_ordered._done:
            self.wait_for(self.last_ordered)
        call_id = self.next_id
        self.next_id += 1
        source = f"{name}({', '.join(f'{k}={v!r}' for k, v in arguments.items())})"
        self.send(
            {
                "t": "call",
                "id": call_id,
                "name": name,
                "args": arguments,
                "source": source,
                "line": _program_line(),
            }
        )
        pending = Pending(call_id)
        self.pending[call_id] = pending
        self.pending_made = True
        if ordered:
            self.last_ordered = pending
        return pending

    def wait_for(self, target: Pending | None) -> None:
        """Reads replies until `target` is answered (or, for None, until none are pending)."""
        while self.pending and (target is None or not target._done):
            message = self.receive()
            pending = self.pending.pop(int(message["id"]), None)
            if pending is None:
                continue
            if "error" in message:
                pending._error = str(message["error"])
            else:
                pending._value = message.get("value")
            pending._done = True

    def write(self, text: str) -> None:
        """Printed text: complete lines join the batch, counted against the byte and line caps."""
        if self.output + len(text) > self.max_output:
            self.stop(LimitExceeded(f"more than {self.max_output} bytes of output"))
        size = len(text) if text.isascii() else len(text.encode("utf-8", "replace"))
        self.output += size
        if self.output > self.max_output:
            self.stop(LimitExceeded(f"more than {self.max_output} bytes of output"))
        if "\n" not in text:
            self.partial.append(text)  # joined once the line ends, not once per piece
            return
        first, *rest = text.split("\n")
        self.partial.append(first)
        lines = ["".join(self.partial), *rest[:-1]]
        self.partial = [rest[-1]] if rest[-1] else []
        self.lines += len(lines)
        if self.lines > self.max_lines:
            self.stop(LimitExceeded(f"more than {self.max_lines} lines of output"))
        self.batch += lines
        self.batch_bytes += size
        if (
            self.batch_bytes >= LOG_BATCH_BYTES
            or time.monotonic() - self.batch_sent >= LOG_BATCH_SECONDS
        ):
            wire.write_all(self.fd, self._batch_frame())

    def flush(self) -> None:
        """Moves the unfinished last line into the batch (the run is ending), within the cap."""
        if self.partial and self.lines < self.max_lines:
            self.lines += 1
            self.batch.append("".join(self.partial))
        self.partial = []


RUN = Run()


def _print(*values: Any, sep: str | None = " ", end: str | None = "\n") -> None:
    RUN.write(
        (" " if sep is None else str(sep)).join(map(str, values))
        + ("\n" if end is None else str(end))
    )


def _json_dumps(
    obj: Any,
    *,
    skipkeys: bool = False,
    ensure_ascii: bool = True,
    allow_nan: bool = True,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    default: Callable[[Any], Any] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        obj,
        skipkeys=skipkeys,
        ensure_ascii=ensure_ascii,
        allow_nan=allow_nan,
        indent=indent,
        separators=separators,
        default=default,
        sort_keys=sort_keys,
    )


def _json_loads(text: str | bytes) -> Any:
    return json.loads(text, object_hook=Dict)


def _without_debug(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` (a function of `re` with a `flags` parameter), refusing re.DEBUG in any spelling."""
    position = list(inspect.signature(fn).parameters).index("flags")

    def checked(*args: Any, **kwargs: Any) -> Any:
        flags = kwargs.get("flags", args[position] if len(args) > position else 0)
        if flags & re.DEBUG:
            RUN.stopped = _NO_STACK  # the refusal below may have no stack left
            _refuse("regex-debug", f"re.{fn.__name__} with re.DEBUG")
        return fn(*args, **kwargs)

    checked.__name__ = checked.__qualname__ = fn.__name__
    checked.__doc__ = fn.__doc__
    return checked


def _memoizable(fn: object) -> Callable[..., Any]:
    """What the runtime's lru_cache gives functools' own to memoize: the program's own function,
    whose `__dict__` is empty, or a closure over any other callable, so that update_wrapper has
    nothing to copy onto the wrapper (see policy.REPLACED_MEMBERS)."""
    if not callable(fn):
        raise TypeError("the first argument must be callable")
    if isinstance(fn, types.FunctionType) and fn.__code__.co_filename in DIALECT_FILES:
        return fn

    def memoized(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return memoized


def _lru_cache(maxsize: Any = 128, typed: bool = False) -> Callable[..., Any]:
    """functools.lru_cache over `_memoizable`, called either way functools' is: on a callable
    (`lru_cache(f)`) or for a decorator (`lru_cache(maxsize=None)`)."""
    if not isinstance(maxsize, int) and callable(maxsize) and isinstance(typed, bool):
        return functools.lru_cache(typed=typed)(_memoizable(maxsize))
    decorate: Callable[[Callable[..., Any]], Callable[..., Any]]
    decorate = functools.lru_cache(maxsize, typed)

    def decorating_function(user_function: Any) -> Callable[..., Any]:
        return decorate(_memoizable(user_function))

    return decorating_function


def _cache(user_function: object, /) -> Callable[..., Any]:
    return functools.lru_cache(maxsize=None)(_memoizable(user_function))


# The runtime's versions of view members, as policy.REPLACED_MEMBERS lists them.
_REPLACEMENTS: dict[tuple[str, str], Callable[..., Any]] = {
    ("json", "dumps"): _json_dumps,
    ("json", "loads"): _json_loads,
    ("functools", "lru_cache"): _lru_cache,
    ("functools", "cache"): _cache,
    **{
        ("re", name): _without_debug(getattr(re, name))
        for module, name in policy.REPLACED_MEMBERS
        if module == "re"
    },
}


def _module_view(name: str) -> ModuleView:
    module = sys.modules[name]
    view = ModuleView(name, module.__doc__)
    view.__getattr__ = _no_member(name)  # type: ignore[method-assign]
    for member in policy.MODULES[name]:
        setattr(view, member, _REPLACEMENTS.get((name, member)) or getattr(module, member))
    return view


def _warm_up() -> None:
    """Touches lazily imported parts of the stdlib before the child loses file access."""
    for lazy in (
        "heapq",
        "copy",
        "locale",
        "unicodedata",
        "hashlib",
        "_strptime",
        "typing",
        "warnings",
        "bisect",
        "calendar",
    ):
        __import__(lazy)
    import datetime
    import decimal
    import statistics
    import textwrap

    datetime.datetime.strptime("2024-01-02", "%Y-%m-%d")
    re.compile(r"(\w+)@(\w+)\.com", re.IGNORECASE).findall("a@b.com")
    json.loads(json.dumps({"a": [1.5, "x"]}))
    decimal.Decimal("1.10") + decimal.Decimal("2")
    statistics.mean([1, 2, 3])
    statistics.median([1.0, 2.0])
    textwrap.wrap("some words " * 10, 20)
    for codec in ("utf-8", "latin-1", "ascii", "utf-16", "idna"):
        "x".encode(codec)
    traceback.extract_tb(None)


# The builtins the runtime provides, as policy.RUNTIME_BUILTINS lists them.
RUNTIME_BUILTINS: dict[str, Any] = {"dict": Dict, "print": _print, "HostError": HostError}


class Template:
    """What every child starts from: prepared once in the pre-warmed parent, before forking."""

    def __init__(self) -> None:
        for name in policy.ALLOWED_MODULES:
            __import__(name)
        _warm_up()
        # A warning would go to the process's own stderr, around the output cap.
        warnings.simplefilter("ignore")
        self.modules = {name: _module_view(name) for name in policy.ALLOWED_MODULES}
        self.builtins: dict[str, Any] = {n: getattr(builtins, n) for n in policy.BUILTINS}
        self.builtins.update(RUNTIME_BUILTINS)

    def namespace(self, start: dict[str, Any]) -> dict[str, Any]:
        ordered = set(start.get("ordered", []))

        def stub(text: str) -> HostFunction:
            """A stub the program declares, its spec written by the rewriter as JSON text."""
            spec = json.loads(text)
            return HostFunction(spec, spec["name"] in ordered)

        ns: dict[str, Any] = {"__builtins__": dict(self.builtins), "__name__": "program"}
        ns.update(self.modules)
        ns.update(
            __r=resolve,
            __call=call,
            __D=Dict,
            __attr=get_attribute,
            __store=store_target,
            __stub=stub,
        )
        for spec in start.get("stubs", []):
            ns[spec["name"]] = HostFunction(spec, spec["name"] in ordered)
        ns.update(start.get("globals") or {})
        return ns


def _apply_limits(limits: dict[str, Any]) -> None:
    """Per-run limits, lowered from the jail's defaults (they can only go down)."""
    cpu = int(limits.get("cpu_seconds") or 0)
    if cpu > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = min(cpu, hard) if hard != resource.RLIM_INFINITY else cpu
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    memory = int(limits.get("memory_bytes") or 0)
    if memory > 0:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = memory if hard == resource.RLIM_INFINITY else min(memory, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    sys.setrecursionlimit(int(limits.get("recursion") or 1000))


# Longest error message sent back; the rest of a huge one would only crowd the call log.
MAX_MESSAGE = 4096


def _error(exc: BaseException) -> dict[str, Any]:
    """The "done" message's account of `exc`: the kind as a word (the service maps it to the
    proto's enum), the type, message, program line and broken rule."""
    if isinstance(exc, dialect.DialectError):
        type_ = "SyntaxError" if exc.rule == "syntax" else "DialectError"
        message, line, rule = exc.message, exc.line, exc.rule
    else:
        type_, message, line = type(exc).__name__, _message(exc), 0
        rule = exc.rule if isinstance(exc, SandboxStop) else ""
        for frame in traceback.extract_tb(exc.__traceback__):
            if frame.filename in DIALECT_FILES:
                line = frame.lineno or 0
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    return {"kind": _classify(exc), "type": type_, "message": message, "line": line, "rule": rule}


def _message(exc: BaseException) -> str:
    """`str(exc)`, which runs the program's values' own conversions and may itself fail (an int
    too long to print, a structure too deep): the run still ends with its error."""
    try:
        return str(exc)
    except BaseException:
        return f"(the message of this {type(exc).__name__} cannot be shown)"


def _classify(exc: BaseException) -> str:
    if isinstance(exc, SandboxStop):
        return exc.kind
    if isinstance(exc, dialect.DialectError):
        return "exception" if exc.rule == "syntax" else "violation"
    if isinstance(exc, values.ValueTooLargeError):
        return "limit"
    if isinstance(exc, values.InvalidValueError):
        return "value"
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, PermissionError):
        return "violation"
    return "exception"


def _load(start: dict[str, Any]) -> list[types.CodeType]:
    """The library's and the program's code, in the order they run, and the host stubs in
    `start["stubs"]`: the client's, parsed here, then the server's, which the service sends
    parsed (`server_stubs`: they are the router's, the same every run). Sources are validated
    and compiled here, in the jailed child and under the run's limits, so neither a huge program
    nor a bug in the parser costs the service anything. A sender may instead send code it
    compiled itself (`program`, `library`: marshalled, base64) with the stubs; only a harness
    that runs raw code past the dialect on purpose does."""
    source = start.get("source")
    if source is None:
        blobs = (start.get("library") or "", start["program"])
        return [marshal.loads(base64.b64decode(blob)) for blob in blobs if blob]
    stubs = dialect.parse_stubs(source["client_functions"], "<client_functions>")
    dialect.validate_globals(start.get("globals") or {})
    program = dialect.compile_module(source["code"], PROGRAM_FILE, implicit_return=True)
    codes = [program.code]
    if source["library"].strip():
        library = dialect.compile_module(source["library"], LIBRARY_FILE, implicit_return=False)
        codes.insert(0, library.code)
    start["stubs"] = [stub.to_json() for stub in stubs] + list(start.get("server_stubs") or [])
    return codes


# What a spare child compiles and sets up before its program arrives (`prefault`): what nearly
# every program has (a host call with a keyword, an attribute, an implicit result).
_PREFAULT_SOURCE = {
    "code": 'found = lookup("x", limit=2)\nfound.size + 1',
    "library": "",
    "client_functions": "def lookup(query: str, limit: int = 1): ...\n",
}


def prefault(template: Template) -> None:
    """Takes, in a spare child waiting for its program, the page faults a run would take.

    A forked child shares the zygote's memory copy-on-write, and a first compile, namespace and
    frame write to several hundred of those pages (reference counts, allocator state): about a
    millisecond of faults on a run's critical path, unless a spare, idle until its program comes,
    takes them first (for 2 to 3 ms of CPU: worth it only while the service is idle). Nothing
    here runs code of a program or touches RUN, the guard's caches, random or the module views,
    so the run starts from the state it would start from without this."""
    start: dict[str, Any] = {"source": dict(_PREFAULT_SOURCE)}
    _load(start)
    lookup = template.namespace(start)["lookup"]
    bound = lookup._signature.bind("x", limit=2)
    bound.apply_defaults()
    frame = wire.encode({"t": "call", "args": to_json(_deep(dict(bound.arguments), set()))})
    wire.decode(frame[wire.HEADER.size :], object_hook=Dict)


def execute(template: Template, fd: int) -> NoReturn:
    """Runs the one program this child exists for, then exits; never returns. A "warm" message
    from the service ahead of the program (sent while the service is idle) warms up first."""
    RUN.fd = fd
    status = 0
    try:
        start = RUN.receive()
        if start.get("t") == "warm":
            prefault(template)
            start = RUN.receive()
        limits = start.get("limits") or {}
        RUN.max_calls = int(limits.get("max_calls") or 1000)
        RUN.max_output = int(limits.get("max_output_bytes") or 1 << 20)
        RUN.max_lines = int(limits.get("max_output_lines") or 10_000)
        _apply_limits(limits)
        codes = _load(start)
        import random

        random.seed(0)  # replay must reproduce the run, so randomness is the same every run
        ns = template.namespace(start)
        for code in codes:
            exec(code, ns)
        if RUN.stopped is not None:
            raise RUN.stopped  # a `finally` swallowed it: the stop wins over the value
        result = ns.get(RESULT_NAME)
        RUN.wait_for(None)
        value = to_json(_deep(result, set()), "result")
        RUN.flush()
        RUN.send({"t": "done", "value": value})
    except (EOFError, wire.FrameError):
        status = 3
    except BaseException as exc:
        failure = RUN.stopped or exc  # a stop swallowed by a `finally` wins over what followed
        RUN.stopped = RUN.stopped or SandboxStop("stopped")
        try:
            RUN.flush()
            RUN.send({"t": "done", "error": _error(failure)})
        except BaseException:
            status = 4
    sys.stdout.flush()
    if status == 0:
        RUN.linger()
    os._exit(status)
