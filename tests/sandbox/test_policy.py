"""The policy's promises, checked in process on the runtime's guard and on everything reachable.

The walk starts from what a program starts with (the module views and the builtins) and follows
every attribute the guard lets through, as a program would, plus the contents of containers.
"""

from __future__ import annotations

import collections
import functools
import re
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from genmesh.sandbox import child, policy

DEPTH = 4


@pytest.fixture(scope="module")
def template() -> child.Template:
    return child.Template()


@pytest.fixture(autouse=True)
def _fresh_run() -> Iterator[None]:
    """A violation stops the process's one run for good; each test starts a fresh one."""
    yield
    child.RUN.stopped = None


def _contents(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    if isinstance(value, list | tuple | set | frozenset):
        return list(value)
    return []


def _reachable(template: child.Template) -> Iterator[Any]:
    """Every object reachable through the guard from a program's namespace, once each."""
    seen: set[int] = set()
    frontier: list[Any] = [*template.modules.values(), *template.builtins.values()]
    for _ in range(DEPTH):
        following: list[Any] = []
        for value in frontier:
            if id(value) in seen:
                continue
            seen.add(id(value))
            yield value
            following += _contents(value)
            for name in dir(value):
                if policy.attribute_rule(name) is None:
                    try:
                        following.append(child.get_attribute(value, name))
                    except (child.Violation, Exception):
                        continue
        frontier = following


def _samples() -> dict[type, Any]:
    """An object of each kind the guard never reads."""
    captured = 1

    def closure(owner: Any = None) -> int:
        return captured

    async def coroutine() -> None:
        return None

    async def agen() -> Any:
        yield None

    try:
        raise ValueError
    except ValueError as exc:
        tb = exc.__traceback__
    running = coroutine()
    running.close()  # never awaited: closed at once so it does not warn
    assert closure.__closure__ is not None
    return {
        types.FrameType: sys._getframe(),
        types.TracebackType: tb,
        types.CodeType: closure.__code__,
        types.GeneratorType: (x for x in range(0)),
        types.CoroutineType: running,
        types.AsyncGeneratorType: agen(),
        types.CellType: closure.__closure__[0],
        types.ModuleType: sys,
        types.FunctionType: closure,
        types.MethodType: types.MethodType(closure, 1),
        types.BuiltinFunctionType: len,
        property: property(),
        classmethod: classmethod(closure),
        staticmethod: staticmethod(closure),
        types.MemberDescriptorType: functools.partial.__dict__["func"],
        types.GetSetDescriptorType: BaseException.__dict__["args"],
        types.WrapperDescriptorType: object.__init__,
        types.MethodWrapperType: (1).__add__,
        types.MethodDescriptorType: str.upper,
        types.ClassMethodDescriptorType: dict.__dict__["fromkeys"],
    }


def test_every_unreadable_kind_has_a_sample() -> None:
    samples = _samples()
    assert set(samples) == set(policy.UNREADABLE_TYPES)
    for kind, sample in samples.items():
        assert type(sample) is kind, kind


def test_nothing_reachable_is_a_module_frame_or_unguarded_format(template: child.Template) -> None:
    views = {id(view) for view in template.modules.values()}
    for value in _reachable(template):
        if isinstance(value, types.ModuleType):
            assert id(value) in views, value
        assert not isinstance(
            value, types.FrameType | types.TracebackType | types.CodeType | types.CellType
        ), value
        assert value is not str.format and value is not str.format_map
        if isinstance(value, types.BuiltinMethodType) and isinstance(value.__self__, str):
            assert not child._walks(value.__self__), value


def test_no_reachable_class_matches_what_the_guard_never_reads(template: child.Template) -> None:
    samples = _samples()
    classes = [v for v in _reachable(template) if isinstance(v, type)]
    assert len(classes) > 50
    for cls in classes:
        for sample in samples.values():
            assert not isinstance(sample, cls), (cls, sample)
        for name in getattr(cls, "__match_args__", ()):
            assert policy.pattern_rule(name) is None, (cls, name)


# Names through which Python code reads attributes, frames or code by a computed name.
WALKERS = frozenset(
    {
        "format",
        "format_map",
        "vformat",
        "getattr",
        "setattr",
        "delattr",
        "hasattr",
        "attrgetter",
        "methodcaller",
        "vars",
        "globals",
        "locals",
        "eval",
        "exec",
        "__import__",
        "import_module",
        "_getframe",
        "__dict__",
        "__globals__",
    }
)


def _functions(value: Any) -> list[types.FunctionType]:
    """The Python functions behind a reachable value (a class: all of its own and inherited)."""
    if isinstance(value, types.MethodType | classmethod | staticmethod):
        value = value.__func__
    if isinstance(value, property):
        return [
            f for f in (value.fget, value.fset, value.fdel) if isinstance(f, types.FunctionType)
        ]
    if isinstance(value, types.FunctionType):
        return [value]
    if isinstance(value, type):
        return [
            f
            for klass in value.__mro__
            if klass.__module__ != "builtins"
            for member in vars(klass).values()
            for f in _functions(member)
        ]
    return []


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def test_library_code_walks_names_only_where_reviewed(template: child.Template) -> None:
    """Crawls the Python code reachable from the views, and the functions it calls by name."""
    todo = [f for value in _reachable(template) for f in _functions(value)]
    seen: set[int] = set()
    walkers: set[str] = set()
    while todo:
        fn = todo.pop()
        if id(fn) in seen or fn.__module__.startswith("genmesh."):
            continue
        seen.add(id(fn))
        for code in _codes(fn.__code__):
            if WALKERS & set(code.co_names):
                walkers.add(f"{fn.__module__}.{fn.__qualname__}")
            todo += [f for n in code.co_names for f in _functions(fn.__globals__.get(n))]
    assert len(seen) > 100
    assert walkers == set(policy.LIBRARY_WALKERS)


def test_views_hold_exactly_the_reviewed_members(template: child.Template) -> None:
    assert set(template.modules) == set(policy.MODULES)
    for name, view in template.modules.items():
        public = {member for member in vars(view) if not member.startswith("_")}
        assert public == set(policy.MODULES[name]), name
    replaced = {
        (name, member)
        for name, view in template.modules.items()
        for member, value in vars(view).items()
        if not member.startswith("_") and value is not getattr(sys.modules[name], member)
    }
    assert replaced == set(policy.REPLACED_MEMBERS)
    builtins = set(policy.BUILTINS) | set(policy.RUNTIME_BUILTINS)
    assert set(template.builtins) == builtins
    assert set(child.RUNTIME_BUILTINS) == set(policy.RUNTIME_BUILTINS)
    assert not builtins & set(policy.FORBIDDEN_NAMES)


def test_rules_are_named_and_explained() -> None:
    used = {
        *policy.FORBIDDEN_SYNTAX.values(),
        *(policy.name_rule(n) for n in ["_x", "eval"]),
        *(policy.attribute_rule(n) for n in ["_x", "gi_frame"]),
        policy.pattern_rule("format"),
    }
    assert used <= set(policy.RULES)
    for rule, reason in policy.RULES.items():
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", rule), rule
        assert reason


@pytest.mark.parametrize(
    ("value", "name", "rule"),
    [
        (1, "__class__", "underscore-attribute"),
        ("x", "gi_frame", "internal-attribute"),
        ((x for x in range(0)), "send", "unreadable-type"),
        (sys, "path", "unreadable-type"),
        (len, "x", "unreadable-type"),
        (AttributeError("a", name="a", obj=sys), "obj", "exception-attribute"),
        (ValueError(), "with_traceback", "internal-attribute"),
        (ValueError(), "add_note", "exception-attribute"),
    ],
)
def test_the_guard_refuses(value: Any, name: str, rule: str) -> None:
    with pytest.raises(child.Violation) as caught:
        child.get_attribute(value, name)
    assert caught.value.rule == rule


def test_the_guard_reads_plain_attributes_and_dict_keys() -> None:
    record = child.Dict(keys="shadow", name="ada")
    assert child.get_attribute(record, "name") == "ada"
    assert callable(child.get_attribute(record, "keys"))
    assert child.get_attribute(1, "real") == 1
    assert child.get_attribute(ValueError(2), "args") == (2,)
    with pytest.raises(AttributeError):
        child.get_attribute(record, "missing")


def test_format_methods_walk_through_the_guard() -> None:
    plain = child.get_attribute("{}-{}", "format")
    assert plain == "{}-{}".format  # no attribute walk: the native method
    walking = child.get_attribute("{0.real}", "format")
    assert isinstance(walking, child.FormatMethod)
    assert walking(3) == "3"
    unbound = child.get_attribute(str, "format")
    assert list(map(unbound, ["{0.imag}", "{}!"], [2, 1])) == ["0", "1!"]
    mapping = child.get_attribute(str, "format_map")
    assert mapping("{a.name}", {"a": child.Dict(name="x")}) == "x"
    for template in ["{0.__class__}", "{0:{0.__class__}}", "{0.__class__}{"]:
        with pytest.raises(child.Violation):
            unbound(template, 1)


def test_only_attribute_dicts_and_reviewed_settings_take_writes() -> None:
    import decimal

    record = child.Dict()
    assert child.store_target(record, "x") is record
    context = decimal.Context()
    assert child.store_target(context, "prec") is context
    for value, name in [(context, "traps"), (sys, "path"), (len, "x"), (collections, "x")]:
        with pytest.raises(child.Violation) as caught:
            child.store_target(value, name)
        assert caught.value.rule == "attribute-store"
