"""Validation and rewriting of the llmPython dialect.

Code is parsed with `ast`, checked against the rules of `policy.py` and rewritten before any of it
runs, so a program that breaks a rule never starts and the error names the line and the rule. The
rewrite is what gives the dialect its features without the program ever seeing them:

- every call goes through ``__call`` (host stubs dispatch without blocking, other callees get
  resolved arguments), and every place that *uses* a value wraps it in ``__r`` (which waits for a
  pending host call), so independent host calls overlap and dependent ones wait;
- every attribute read ``x.a`` becomes ``__attr(x, "a")`` and the object of every attribute write
  or delete becomes ``__store(x, "a")``: the runtime guard sees every attribute path;
- dict displays and comprehensions build ``__D`` dicts, which allow JavaScript-style attribute
  access;
- the last top-level expression is stored in ``__result__`` (implicit return);
- stub definitions (``def f(a, b=1): ...``) become host functions.

The runtime names start with underscores, which programs may not use, so a program cannot reach
or replace them.
"""

from __future__ import annotations

import ast
import inspect
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from genmesh.runtime import values
from genmesh.sandbox import policy

PROGRAM_FILE = "<program>"
LIBRARY_FILE = "<library>"

MAX_SOURCE_BYTES = 256 << 10  # programs are a few KiB; this much compiles in 1-4 s of CPU

_RUNTIME_RESOLVE = "__r"
_RUNTIME_CALL = "__call"
_RUNTIME_DICT = "__D"
_RUNTIME_STUB = "__stub"
_RUNTIME_ATTRIBUTE = "__attr"
_RUNTIME_STORE = "__store"
RESULT_NAME = "__result__"


class DialectError(Exception):
    """Code that breaks a rule of the dialect; it never runs."""

    def __init__(self, rule: str, message: str, line: int) -> None:
        super().__init__(f"line {line}: {message} [{rule}]")
        self.rule = rule
        self.message = message
        self.line = line


@dataclass(frozen=True)
class Param:
    """A stub parameter: its name, kind (an `inspect.Parameter` kind name) and optional default."""

    name: str
    kind: str
    has_default: bool = False
    default: Any = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.has_default:
            out["default"] = self.default
        return out


@dataclass(frozen=True)
class Stub:
    """A host function declared by a Python stub: the signature binds the program's arguments."""

    name: str
    params: tuple[Param, ...]
    doc: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "params": [p.to_json() for p in self.params], "doc": self.doc}


@dataclass
class Compiled:
    """A validated and rewritten module, ready to be executed in the child."""

    code: Any  # types.CodeType; Any keeps marshal happy under mypy
    stubs: list[Stub] = field(default_factory=list)


def _fail(rule: str, message: str, node: ast.AST | None) -> DialectError:
    return DialectError(rule, message, getattr(node, "lineno", 0) or 0)


def _is_stub(node: ast.FunctionDef) -> bool:
    body = list(node.body)
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    if not body:
        return True
    return (
        len(body) == 1
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and body[0].value.value is Ellipsis
    )


def stub_from_def(node: ast.FunctionDef) -> Stub:
    """The signature of a stub definition; defaults must be literals."""
    if node.decorator_list:
        raise _fail("stub", f"stub {node.name!r} may not have decorators", node)
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += list(args.defaults)
    params: list[Param] = []

    def literal(expr: ast.expr | None, name: str) -> tuple[bool, Any]:
        if expr is None:
            return False, None
        try:
            value = ast.literal_eval(expr)
        except (ValueError, TypeError):  # TypeError: an unhashable key, as in `{[1]: 2}`
            raise _fail(
                "stub-default", f"default of {name!r} in stub {node.name!r} is not a literal", expr
            ) from None
        try:
            values.check(value)
        except values.InvalidValueError as exc:  # `...`, a set, bytes, 1e999: no JSON for them
            raise _fail(
                "stub-default",
                f"default of {name!r} in stub {node.name!r} cannot cross to the host: {exc}",
                expr,
            ) from None
        return True, value

    for i, (arg, default) in enumerate(zip(positional, defaults, strict=True)):
        kind = "POSITIONAL_ONLY" if i < len(args.posonlyargs) else "POSITIONAL_OR_KEYWORD"
        has, value = literal(default, arg.arg)
        params.append(Param(arg.arg, kind, has, value))
    if args.vararg:
        params.append(Param(args.vararg.arg, "VAR_POSITIONAL"))
    for arg, kw_default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        has, value = literal(kw_default, arg.arg)
        params.append(Param(arg.arg, "KEYWORD_ONLY", has, value))
    if args.kwarg:
        params.append(Param(args.kwarg.arg, "VAR_KEYWORD"))
    return Stub(node.name, tuple(params), ast.get_docstring(node) or "")


class _Validator(ast.NodeVisitor):
    """Rejects everything outside the dialect; the first offence wins."""

    def _name(self, name: str | None, node: ast.AST, what: str) -> None:
        rule = None if name is None else policy.name_rule(name)
        if rule is not None:
            raise _fail(rule, f"{what} {name!r} is refused: {policy.RULES[rule]}", node)

    def _attribute(self, name: str, node: ast.AST, pattern: bool = False) -> None:
        rule = policy.pattern_rule(name) if pattern else policy.attribute_rule(name)
        if rule is not None:
            raise _fail(rule, f"attribute {name!r} is refused: {policy.RULES[rule]}", node)

    def _pattern_name(self, node: ast.expr) -> None:
        """A dotted name in a pattern, read in C without the guard: `case datetime.date():`."""
        while isinstance(node, ast.Attribute):
            self._attribute(node.attr, node, pattern=True)
            node = node.value
        self.visit(node)

    def generic_visit(self, node: ast.AST) -> None:
        rule = policy.FORBIDDEN_SYNTAX.get(type(node))
        if rule is not None:
            raise _fail(rule, policy.RULES[rule], node)
        super().generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        self._name(node.id, node, "name")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._attribute(node.attr, node)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._name(node.name, node, "function")
        if _is_stub(node):
            stub_from_def(node)
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        self._name(node.arg, node, "argument")
        self.generic_visit(node)

    def visit_keyword(self, node: ast.keyword) -> None:
        self._name(node.arg, node, "keyword")
        self.generic_visit(node)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        self._name(node.name, node, "exception name")
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        self._name(node.name, node, "pattern name")
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        self._name(node.name, node, "pattern name")

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        self._name(node.rest, node, "pattern name")
        self.generic_visit(node)

    def visit_MatchValue(self, node: ast.MatchValue) -> None:
        self._pattern_name(node.value)

    def visit_MatchClass(self, node: ast.MatchClass) -> None:
        self._pattern_name(node.cls)
        for name in node.kwd_attrs:
            self._attribute(name, node, pattern=True)
        for pattern in [*node.patterns, *node.kwd_patterns]:
            self.visit(pattern)


# Node types whose value may be a pending host call; only these need resolving where used.
_MAYBE_PENDING = (ast.Name, ast.Attribute, ast.Subscript, ast.Call, ast.IfExp, ast.NamedExpr)

# For each node type, the fields whose values it consumes (and so must be resolved).
_CONSUMED: dict[type[ast.AST], tuple[str, ...]] = {
    ast.BinOp: ("left", "right"),
    ast.UnaryOp: ("operand",),
    ast.BoolOp: ("values",),
    ast.Compare: ("left", "comparators"),
    ast.IfExp: ("test",),
    ast.Subscript: ("value", "slice"),
    ast.Slice: ("lower", "upper", "step"),
    ast.If: ("test",),
    ast.While: ("test",),
    ast.For: ("iter",),
    ast.comprehension: ("iter", "ifs"),
    ast.FormattedValue: ("value",),
    ast.Assert: ("test", "msg"),
    ast.Raise: ("exc", "cause"),
    ast.withitem: ("context_expr",),
    ast.Set: ("elts",),
    ast.AugAssign: ("value",),
    ast.Match: ("subject",),
    ast.ExceptHandler: ("type",),
}


def _runtime(name: str, args: list[ast.expr], like: ast.AST) -> ast.Call:
    call = ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=args, keywords=[])
    return ast.copy_location(call, like)


def _resolve(expr: ast.expr) -> ast.expr:
    if isinstance(expr, _MAYBE_PENDING):
        return _runtime(_RUNTIME_RESOLVE, [expr], expr)
    return expr


class _Rewriter(ast.NodeTransformer):
    def __init__(self) -> None:
        self.stubs: list[Stub] = []

    def visit(self, node: ast.AST) -> Any:
        node = super().visit(node)
        fields = _CONSUMED.get(type(node), ())
        for name in fields:
            value = getattr(node, name, None)
            if isinstance(value, list):
                setattr(node, name, [_resolve(v) for v in value])
            elif isinstance(value, ast.expr):
                setattr(node, name, _resolve(value))
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        args: list[ast.expr] = [node.func]
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                arg.value = _resolve(arg.value)
            args.append(arg)
        for kw in node.keywords:
            if kw.arg is None:
                kw.value = _resolve(kw.value)
        call = ast.Call(
            func=ast.Name(id=_RUNTIME_CALL, ctx=ast.Load()), args=args, keywords=node.keywords
        )
        return ast.copy_location(call, node)

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        name = ast.copy_location(ast.Constant(node.attr), node)
        if isinstance(node.ctx, ast.Load):
            return _runtime(_RUNTIME_ATTRIBUTE, [node.value, name], node)
        node.value = _runtime(_RUNTIME_STORE, [node.value, name], node.value)
        return node

    def visit_MatchValue(self, node: ast.MatchValue) -> ast.AST:
        return node  # a dotted name must stay one; the validator checked it with pattern_rule

    def visit_MatchClass(self, node: ast.MatchClass) -> ast.AST:
        node.patterns = [self.visit(p) for p in node.patterns]
        node.kwd_patterns = [self.visit(p) for p in node.kwd_patterns]
        return node

    def visit_Dict(self, node: ast.Dict) -> ast.AST:
        self.generic_visit(node)
        node.keys = [k if k is None else _resolve(k) for k in node.keys]
        node.values = [
            _resolve(v) if k is None else v for k, v in zip(node.keys, node.values, strict=True)
        ]
        return _runtime(_RUNTIME_DICT, [node], node)

    def visit_DictComp(self, node: ast.DictComp) -> ast.AST:
        self.generic_visit(node)
        node.key = _resolve(node.key)
        return _runtime(_RUNTIME_DICT, [node], node)

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        self.generic_visit(node)
        if any(isinstance(t, ast.Tuple | ast.List) for t in node.targets) and not isinstance(
            node.value, ast.Tuple | ast.List
        ):
            node.value = _resolve(node.value)
        return node

    def visit_Starred(self, node: ast.Starred) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.ctx, ast.Load):
            node.value = _resolve(node.value)
        return node

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        self.generic_visit(node)
        if node.type is None:
            # A bare except would also catch the sandbox's own limit signals.
            node.type = ast.copy_location(ast.Name(id="Exception", ctx=ast.Load()), node)
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        if _is_stub(node):
            stub = stub_from_def(node)
            self.stubs.append(stub)
            spec = ast.Constant(json.dumps(stub.to_json()))  # data, never code
            assign = ast.Assign(
                targets=[ast.Name(id=node.name, ctx=ast.Store())],
                value=_runtime(_RUNTIME_STUB, [spec], node),
            )
            return ast.copy_location(assign, node)
        self.generic_visit(node)
        return node


def parse(source: str, filename: str = PROGRAM_FILE) -> ast.Module:
    """Parses and validates `source`; raises DialectError naming the line and the rule."""
    if len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        raise DialectError("size", f"source is larger than {MAX_SOURCE_BYTES} bytes", 0)
    try:
        tree = ast.parse(source, filename=filename)
        _Validator().visit(tree)
    except SyntaxError as exc:
        raise DialectError("syntax", f"{exc.msg}", exc.lineno or 0) from None
    except (RecursionError, MemoryError):
        raise DialectError("too-complex", "the code is nested too deeply", 0) from None
    return tree


def compile_module(source: str, filename: str = PROGRAM_FILE, *, implicit_return: bool) -> Compiled:
    """Validates and rewrites a program or library into a code object for the child."""
    tree = parse(source, filename)
    rewriter = _Rewriter()
    try:
        if implicit_return and tree.body and isinstance(tree.body[-1], ast.Expr):
            last = tree.body[-1]
            assert isinstance(last, ast.Expr)
            tree.body[-1] = ast.copy_location(
                ast.Assign(targets=[ast.Name(id=RESULT_NAME, ctx=ast.Store())], value=last.value),
                last,
            )
        tree = rewriter.visit(tree)
        ast.fix_missing_locations(tree)
        code = compile(tree, filename, "exec", dont_inherit=True)
    except (RecursionError, MemoryError):
        raise DialectError("too-complex", "the code is nested too deeply", 0) from None
    except SyntaxError as exc:
        raise DialectError("syntax", f"{exc.msg}", exc.lineno or 0) from None
    return Compiled(code, rewriter.stubs)


def parse_stubs(source: str, filename: str = "<functions>") -> list[Stub]:
    """Parses a block of stub declarations (`def f(a, b=1): ...`), and nothing else."""
    if not source.strip():
        return []
    tree = parse(source, filename)
    stubs: list[Stub] = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or not _is_stub(node):
            raise _fail(
                "stub", "function declarations may only contain stubs `def f(...): ...`", node
            )
        stubs.append(stub_from_def(node))
    return stubs


def validate_globals(names: Iterable[str]) -> None:
    """Rejects predefined variables whose names the program could not write itself."""
    for name in names:
        if not name.isidentifier() or policy.name_rule(name) is not None:
            raise DialectError("globals", f"variable name {name!r} is not allowed", 0)


def stub_from_function(name: str, fn: Callable[..., Any]) -> Stub:
    """The stub of a trusted host-side function, from its signature; defaults must be JSON."""
    params = []
    for p in inspect.signature(fn).parameters.values():
        has_default = p.default is not inspect.Parameter.empty
        if has_default:
            json.dumps(p.default)  # a default the program cannot see would be a lie
        default = p.default if has_default else None
        params.append(Param(p.name, p.kind.name, has_default, default))
    return Stub(name, tuple(params), inspect.getdoc(fn) or "")


def stub_source(stubs: Sequence[Stub]) -> str:
    """Python stub text for `stubs`, e.g. to show a model which functions it may call."""
    lines = []
    for stub in stubs:
        parts = []
        star = False
        for p in stub.params:
            text = p.name
            if p.kind == "VAR_POSITIONAL":
                text, star = f"*{p.name}", True
            elif p.kind == "VAR_KEYWORD":
                text = f"**{p.name}"
            elif p.kind == "KEYWORD_ONLY" and not star:
                parts.append("*")
                star = True
            if p.has_default:
                text += f"={p.default!r}"
            parts.append(text)
        lines.append(f"def {stub.name}({', '.join(parts)}): ...")
    return "\n".join(lines) + ("\n" if lines else "")
