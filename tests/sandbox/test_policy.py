"""The policy's promises, checked in process on the runtime's guard and on everything reachable.

The walk starts from what a program starts with (the module views and the builtins) and follows
every attribute the guard lets through, as a program would, plus the contents of containers. It
then applies each callable a program starts with to each class it reached (a wrapper that took a
copy of a class's namespace would hand out the class's raw methods and descriptors) and walks
what comes out.
"""

from __future__ import annotations

import collections
import decimal
import enum
import fractions
import functools
import re
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from genmesh.sandbox import child, dialect, policy

DEPTH = 4
APPLIED_DEPTH = 2
Point = collections.namedtuple("Point", ["x"])


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


def _read_all(value: Any) -> list[Any]:
    """What the guard hands out for each attribute of `value` that a program can name."""
    values = []
    for name in dir(value):
        if policy.attribute_rule(name) is None:
            try:
                values.append(child.get_attribute(value, name))
            except (child.SandboxStop, Exception):
                child.RUN.stopped = None  # a refusal stops the run; the walk goes on
    return values


def _walk(start: list[Any], depth: int, seen: dict[int, Any]) -> Iterator[Any]:
    """Every object reachable through the guard from `start` in `depth` steps, once each."""
    frontier = start
    for _ in range(depth):
        following: list[Any] = []
        for value in frontier:
            if id(value) in seen:
                continue
            seen[id(value)] = value  # kept alive, so that no id is reused during the walk
            yield value
            following += _contents(value)
            following += _read_all(value)
        frontier = following


def _applied(callables: list[Any], classes: list[type]) -> list[Any]:
    """What each callable makes of each class, and what the callables that the callables return
    without arguments (decorators such as `lru_cache()`) make of them."""
    results = []
    factories = []
    for fn in callables:
        for args in [(), *((cls,) for cls in classes)]:
            try:
                result = fn(*args)
            except (child.SandboxStop, Exception):
                child.RUN.stopped = None  # `print` is over the output cap here: the walk goes on
                continue
            results.append(result)
            if not args and callable(result) and not isinstance(result, type):
                factories.append(result)
    return results + (_applied(factories, classes) if factories else [])


@pytest.fixture(scope="module")
def start(template: child.Template) -> list[Any]:
    """Every object reachable through the guard from a program's namespace."""
    return list(_walk([*template.modules.values(), *template.builtins.values()], DEPTH, {}))


@pytest.fixture(scope="module")
def applied(template: child.Template, start: list[Any]) -> list[Any]:
    """What the callables a program starts with make of every class reachable."""
    callables = [
        member
        for scope in [*(vars(view) for view in template.modules.values()), template.builtins]
        for name, member in scope.items()
        if not name.startswith("_") and callable(member)
    ]
    return _applied(callables, [value for value in start if isinstance(value, type)])


@pytest.fixture(scope="module")
def reachable(start: list[Any], applied: list[Any]) -> list[Any]:
    """Everything a program can reach through the guard, applications of its callables too."""
    seen = {id(value): value for value in start}
    return start + list(_walk(applied, APPLIED_DEPTH, seen))


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


def test_nothing_reachable_is_a_module_frame_descriptor_or_unguarded_format(
    template: child.Template, reachable: list[Any]
) -> None:
    views = {id(view) for view in template.modules.values()}
    assert len(reachable) > 5000
    for value in reachable:
        if isinstance(value, types.ModuleType):
            assert id(value) in views, value
        assert not isinstance(
            value, types.FrameType | types.TracebackType | types.CodeType | types.CellType
        ), value
        assert policy.value_rule(type(value)) is not policy.Value.REFUSED, value
        assert value is not str.format and value is not str.format_map
        if isinstance(value, types.BuiltinMethodType) and isinstance(value.__self__, str):
            assert not child._walks(value.__self__), value


def test_what_the_views_make_of_a_class_holds_none_of_its_namespace(applied: list[Any]) -> None:
    """A wrapper holding a copy of a class's namespace (functools.update_wrapper copies
    `__dict__`) would hand out its raw methods and descriptors as plain attributes."""
    assert len(applied) > 1000
    for value in applied:
        namespace = getattr(value, "__dict__", None)
        for member in namespace.values() if isinstance(namespace, dict) else ():
            assert not isinstance(member, types.MethodDescriptorType), (value, member)
            assert policy.value_rule(type(member)) is not policy.Value.REFUSED, (value, member)


def test_no_reachable_class_matches_what_the_guard_never_reads(reachable: list[Any]) -> None:
    samples = _samples()
    classes = [v for v in reachable if isinstance(v, type)]
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


def test_library_code_walks_names_only_where_reviewed(reachable: list[Any]) -> None:
    """Crawls the Python code reachable from the views (and behind the runtime's versions of
    members, which call the originals), and the functions it calls by name."""
    originals = [getattr(sys.modules[module], name) for module, name in policy.REPLACED_MEMBERS]
    todo = [f for value in [*reachable, *originals] for f in _functions(value)]
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
        (fractions.Fraction, "numerator", "descriptor"),
        (int, "denominator", "descriptor"),
        (Point, "x", "descriptor"),
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

    record = child.Dict()
    assert child.store_target(record, "x") is record
    context = decimal.Context()
    assert child.store_target(context, "prec") is context
    for value, name in [(context, "traps"), (sys, "path"), (len, "x"), (collections, "x")]:
        with pytest.raises(child.Violation) as caught:
            child.store_target(value, name)
        assert caught.value.rule == "attribute-store"


def test_the_guard_judges_the_value_whatever_object_held_it() -> None:
    """functools' own lru_cache copies a class's namespace onto its wrapper: what the guard
    hands out from there (or from any object holding a format method) is judged like what it
    hands out from the class."""
    wrapper = functools.lru_cache(str)
    unbound = child.get_attribute(wrapper, "format")
    assert isinstance(unbound, child.FormatMethod)
    assert isinstance(child.get_attribute(wrapper, "format_map"), child.FormatMethod)
    with pytest.raises(child.Violation) as caught:
        unbound("{0.__globals__}", print)
    assert caught.value.rule == "underscore-attribute"
    child.RUN.stopped = None
    assert child.get_attribute(wrapper, "upper") is str.upper  # C methods stay usable
    holder = types.SimpleNamespace(bound="{0.__class__}".format, plain="{}".format)
    assert isinstance(child.get_attribute(holder, "bound"), child.FormatMethod)
    assert child.get_attribute(holder, "plain") == "{}".format
    for cls, name in [
        (fractions.Fraction, "numerator"),
        (fractions.Fraction, "from_float"),
        (re.RegexFlag, "DEBUG"),
    ]:
        with pytest.raises(child.Violation) as caught:
            child.get_attribute(functools.lru_cache(cls), name)
        assert caught.value.rule == "descriptor"
        child.RUN.stopped = None
    assert child.get_attribute(fractions.Fraction(2, 3), "numerator") == 2
    assert child.get_attribute(re.RegexFlag, "DEBUG") is re.DEBUG


def _descriptors() -> list[Any]:
    return [
        property(),
        classmethod(type),
        staticmethod(len),
        enum.property(),
        functools.cached_property(len),
        functools.partialmethod(len),
        vars(Point)["x"],
        vars(functools.partial)["func"],
        vars(BaseException)["args"],
        vars(dict)["fromkeys"],
        object.__init__,
    ]


@pytest.mark.parametrize("descriptor", _descriptors(), ids=lambda d: type(d).__name__)
def test_descriptors_are_refused_as_values(descriptor: Any) -> None:
    assert policy.value_rule(type(descriptor)) is policy.Value.REFUSED


@pytest.mark.parametrize(
    "value",
    [str.upper, len, "x".upper, lambda: 0, functools.lru_cache(len), fractions.Fraction, re.I, 1],
)
def test_callables_and_data_are_handed_out(value: Any) -> None:
    assert policy.value_rule(type(value)) is not policy.Value.REFUSED


def test_the_views_memoize_without_copying_a_namespace(template: child.Template) -> None:
    view = template.modules["functools"]
    for wrapper in [view.lru_cache(str), view.lru_cache(maxsize=2)(str), view.cache(str)]:
        assert not {"format", "upper", "maketrans"} & set(vars(wrapper)), vars(wrapper)
        assert [wrapper(1), wrapper(1), wrapper.cache_info().hits] == ["1", "1", 1]
    namespace: dict[str, Any] = {}
    exec(compile("def f(n):\n    return n", dialect.PROGRAM_FILE, "exec"), namespace)
    assert view.lru_cache(namespace["f"]).__wrapped__ is namespace["f"]
    with pytest.raises(TypeError):
        view.lru_cache("not a size")
    with pytest.raises(TypeError):
        view.lru_cache()(1)


def test_a_refusal_stops_every_later_access() -> None:
    """A `finally` may swallow the violation: the guard raises it again, whatever comes next."""
    with pytest.raises(child.Violation) as caught:
        child.get_attribute(1, "__class__")
    later_accesses: list[Callable[[], object]] = [
        lambda: child.get_attribute(1, "real"),
        lambda: child.store_target(child.Dict(), "x"),
        lambda: child.call(len, []),
    ]
    for later in later_accesses:
        with pytest.raises(child.Violation) as again:
            later()
        assert again.value is caught.value
