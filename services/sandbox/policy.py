"""The sandbox's access policy: every rule of the llmPython dialect, each with its reason.

A program runs as ordinary CPython bytecode, so what keeps it inside the dialect is what it can
name and what it can reach. Two mechanisms enforce this file and keep no rules of their own:

- the validator (`dialect.py`) rejects code before it runs: forbidden syntax, names and attribute
  names, with the line and the rule;
- the runtime guard (`child.py`) sees every attribute access: the rewriter turns each read `x.a`
  into `__attr(x, "a")` and the object of each write or delete (`x.a = v`, `x.a += v`,
  `del x.a`) into `__store(x, "a")`, and every place where C code reads an attribute on the
  program's behalf (format templates, the `__getattr__` fallbacks of attribute dicts and pending
  values) calls the same guard.

The invariants these rules keep:

1. Every attribute path goes through the guard, which checks the name (`attribute_rule`) and the
   kind of object (`read_rule`). The only reads the guard does not see are those the interpreter
   makes itself: the read half of `x.a += v` (on an object `__store` let through), and `match`
   patterns: their dotted names and keyword sub-patterns are checked statically with the
   stricter `pattern_rule`, positional sub-patterns read a class's `__match_args__`, and a test
   walks everything reachable from the views to check that every `__match_args__` passes
   `pattern_rule` and that no reachable class matches an object whose kind the guard refuses.
2. Every callable a program can hold is safe to call from C code with any arguments: through
   `map`, `sorted(key=...)`, `functools.partial`, `operator.call`, `json.dumps(default=...)`,
   `re.sub`, a decorator. No callable relies on the runtime's `__call` having checked anything.
   The guard judges the value of every read (`value_rule`), not only the object read from, so
   whatever holds them: the one kind of callable that interprets strings as attribute paths
   (`str.format`, `str.format_map`, bound or not) comes back in a form that walks those paths
   through the guard when it runs, and a class's descriptors (properties, slots...) never come
   back at all.
3. Only the program's own attribute dicts take attribute writes, plus a reviewed few settings
   whose setters are C code that validates the value.
4. Modules are views: an explicit list of members, each reviewed and listed with the reason it is
   safe. No member is a module or returns one, and no library code behind them reads
   attributes, frames or code by computed names except where LIBRARY_WALKERS says why (a test
   crawls that code).
"""

from __future__ import annotations

import ast
import decimal
import enum
import functools
import types
from collections.abc import Mapping

# The rules a rejected or stopped program can break, as reported in `ProgramError.rule`.
RULES: dict[str, str] = {
    # Static: the program never runs (DialectError).
    "syntax": "the source does not parse as Python",
    "size": "the source is larger than the service accepts",
    "too-complex": "the code is nested too deeply to validate or compile",
    "import": "there is no import: the allowed modules are pre-imported as reviewed views",
    "global": "`global`/`nonlocal` are not part of the dialect: functions keep to their scope",
    "class": "class bodies define dunder methods, descriptors and metaclasses the guard cannot see",
    "async": "host calls already run in parallel; async code is not needed",
    "generator": "`yield` suspends frames the runtime does not track",
    "try-star": "`except*` would hand the sandbox's stop signals back wrapped in exception groups",
    "underscore-name": "underscore names reach the runtime (`__r`, `__attr`) or internals",
    "forbidden-name": "the builtin recovers internals, reflects on objects or touches the outside",
    "underscore-attribute": "underscore attributes reach internals (`__class__`, `__globals__`)",
    "internal-attribute": "the attribute leads to frames, code, tracebacks or globals",
    "pattern-attribute": "a `match` pattern reads the attribute without the run-time guard",
    "stub": "function declarations may only hold stubs `def f(...): ...`",
    "stub-default": "a stub default crosses to the host, so it must be a literal",
    "globals": "predefined variables must be names the program could write itself",
    # Run time: the program is stopped (child.Violation).
    "unreadable-type": "objects of this kind (frames, real modules, functions...) have no "
    "attributes a program may read",
    "exception-attribute": "exceptions expose only their reviewed data attributes",
    "module-member": "the module view lists only reviewed members; this is not one of them",
    "attribute-store": "only the program's attribute dicts (and reviewed settings) take writes",
    "regex-debug": "re.DEBUG prints to the process's own stdout, around the output cap",
    "descriptor": "a class's descriptors (properties, slots, class-method wrappers) are its "
    "machinery, not values: their getters and setters work on any instance, around the guard",
    "guard-stack": "the guard had no stack left to check the access (the program is at the "
    "recursion limit), so it refuses it and ends the run",
}

# Syntax outside the dialect, by the rule it breaks (see RULES for the reasons).
FORBIDDEN_SYNTAX: dict[type[ast.AST], str] = {
    ast.Import: "import",
    ast.ImportFrom: "import",
    ast.Global: "global",
    ast.Nonlocal: "global",
    ast.ClassDef: "class",
    ast.AsyncFunctionDef: "async",
    ast.Await: "async",
    ast.AsyncFor: "async",
    ast.AsyncWith: "async",
    ast.Yield: "generator",
    ast.YieldFrom: "generator",
    ast.TryStar: "try-star",
}

# Builtins that are not in the dialect, by reason. Only BUILTINS exist at run time anyway; naming
# one of these anywhere (variable, argument, keyword) is rejected statically with a clear rule.
FORBIDDEN_NAMES: dict[str, str] = {
    **dict.fromkeys(("eval", "exec", "compile"), "runs code outside the validator"),
    **dict.fromkeys(("open", "input", "breakpoint", "help", "exit", "quit"), "touches the outside"),
    **dict.fromkeys(
        ("getattr", "setattr", "delattr", "hasattr", "vars", "dir"),
        "reaches attributes by a name computed at run time, around the guard",
    ),
    **dict.fromkeys(("globals", "locals"), "hands out the namespace, runtime names included"),
    **dict.fromkeys(
        ("type", "object", "super"), "reflects on classes: subclass walks, new classes"
    ),
    **dict.fromkeys(
        ("classmethod", "staticmethod", "property"), "builds descriptors for class bodies"
    ),
    "memoryview": "raw buffer access",
}

# Attribute names without underscores that still lead to internals; forbidden statically on
# every object, and again by the guard for names that arrive at run time.
FORBIDDEN_ATTRIBUTES: dict[str, str] = {
    **dict.fromkeys(
        (
            "gi_frame",
            "gi_code",
            "gi_yieldfrom",
            "gi_running",
            "gi_suspended",
            "cr_frame",
            "cr_code",
            "cr_await",
            "cr_origin",
            "ag_frame",
            "ag_code",
            "ag_await",
        ),
        "a generator's or coroutine's frame and code",
    ),
    **dict.fromkeys(
        (
            "f_back",
            "f_builtins",
            "f_code",
            "f_globals",
            "f_locals",
            "f_trace",
            "f_lasti",
            "tb_frame",
            "tb_next",
            "tb_lasti",
        ),
        "frames and tracebacks: globals, builtins and the caller's frames",
    ),
    **dict.fromkeys(("co_code", "co_consts", "co_names"), "code objects' contents"),
    "cell_contents": "a closure cell's value: another function's private variables",
    **dict.fromkeys(("func_globals", "func_code"), "old spellings of function internals"),
    "mro": "a class's bases: the start of a subclass walk",
    "with_traceback": "attaches or recovers a traceback, and with it frames",
}

# Attributes whose value interprets a string as attribute paths: "{0.__class__}".format walks
# `__class__` in C. When a template has attribute paths (bound: at once; the unbound method: when
# called), the guard hands out a version that walks them through the guard.
FORMAT_ATTRIBUTES: dict[str, str] = {
    "format": "str.format walks the attribute paths of its template's fields",
    "format_map": "str.format_map walks the attribute paths of its template's fields",
}

# Names a `match` pattern may not read, beyond `attribute_rule`: a keyword sub-pattern or a
# dotted name in a pattern reads the attribute in C without the guard, so names that are only
# dangerous on some kinds of objects are refused there on all of them.
PATTERN_FORBIDDEN: dict[str, str] = {
    **FORMAT_ATTRIBUTES,
    "obj": "AttributeError.obj is the object a failed lookup was made on, possibly an internal one",
}

# The attributes a program may read on an exception: the data it was raised with. The others
# (`with_traceback`, AttributeError's `obj`, and whatever a future Python adds) are refused.
EXCEPTION_ATTRIBUTES: dict[str, str] = {
    "args": "the values the exception was raised with",
    "name": "the missing name (NameError, AttributeError): a string",
    "value": "StopIteration's value: what the iterator returned",
    **dict.fromkeys(
        ("msg", "doc", "pos", "lineno", "colno", "pattern"),
        "where a JSON document or a regular expression failed to parse: strings and numbers",
    ),
    **dict.fromkeys(
        ("encoding", "object", "start", "end", "reason"),
        "a Unicode error's codec, input and position: the program's own data",
    ),
}

# Kinds of objects whose attributes are never readable, by reason. Module views are not
# `types.ModuleType` as far as the guard is concerned: the runtime rules them as PLAIN.
UNREADABLE_TYPES: dict[type, str] = {
    types.FrameType: "a frame: globals, locals, builtins, the caller",
    types.TracebackType: "a traceback: frames",
    types.CodeType: "a code object: constants, names, and new code by `replace`",
    types.GeneratorType: "a generator: its frame and code",
    types.CoroutineType: "a coroutine: its frame and code",
    types.AsyncGeneratorType: "an async generator: its frame and code",
    types.CellType: "a closure cell: another function's variables",
    types.ModuleType: "a real module: everything it imported (os, sys), unreviewed",
    types.FunctionType: "a function: its public surface is empty, the rest is globals and code",
    types.MethodType: "a bound method: its public surface is empty, the rest is `__self__`",
    types.BuiltinFunctionType: "a builtin function or method: `__self__` is a module or object",
    property: "a property: its getter and setter functions",
    classmethod: "a class-method wrapper: the function inside",
    staticmethod: "a static-method wrapper: the function inside",
    types.MemberDescriptorType: "a slot descriptor: reads and writes any instance's slot",
    types.GetSetDescriptorType: "a C descriptor: reads and writes any instance's field",
    types.WrapperDescriptorType: "an unbound slot wrapper",
    types.MethodWrapperType: "a bound slot wrapper: `__self__`",
    types.MethodDescriptorType: "an unbound C method",
    types.ClassMethodDescriptorType: "an unbound C class method",
}


# Objects whose attributes may be written, beyond the program's attribute dicts (the runtime's
# `Dict`, whose attribute writes are key writes).
WRITABLE_ATTRIBUTES: dict[type, dict[str, str]] = {
    decimal.Context: dict.fromkeys(
        ("prec", "rounding", "Emin", "Emax", "capitals", "clamp"),
        "a decimal context's settings: C setters check every value; the context is this run's",
    ),
}


class Read(enum.Enum):
    """How the guard reads attributes of a kind of object."""

    PLAIN = "plain"  # an ordinary attribute read, name checked, value judged by `value_rule`
    DICT = "dict"  # the runtime's attribute dicts: dict methods first, then keys
    STR = "str"  # exactly `str`, whose attributes are its methods: `format`/`format_map` judged
    EXCEPTION = "exception"  # only EXCEPTION_ATTRIBUTES
    NEVER = "never"  # UNREADABLE_TYPES


def read_rule(kind: type) -> Read:
    """How the guard reads attributes of objects of `kind` (the runtime's own kinds aside)."""
    if issubclass(kind, tuple(UNREADABLE_TYPES)):
        return Read.NEVER
    if issubclass(kind, BaseException):
        return Read.EXCEPTION
    if kind is str:
        return Read.STR
    return Read.PLAIN


# Descriptors a program may hold, by reason. Every other kind that implements the descriptor
# protocol (`__get__`, `__set__`, `__delete__`: property, enum.property, classmethod,
# staticmethod, cached_property, slot and C field descriptors, namedtuple fields...) is refused
# as the value of a read: reading it on its class hands out its getter and setter, which work on
# any instance (a property's `fset` writes where `__store` refuses), and none is data a program
# needs.
HELD_DESCRIPTORS: dict[type, str] = {
    types.FunctionType: "a function: binding it to an instance is only calling it with one",
    types.MethodDescriptorType: "an unbound C method (`str.upper`, for `map`): it checks the type "
    "of the object it is called on; str's format methods come back guarded",
    functools._lru_cache_wrapper: "a memoized callable (lru_cache): it binds like a function",
}

_DESCRIPTOR_METHODS = ("__get__", "__set__", "__delete__")


class Value(enum.Enum):
    """How the guard hands out a value that an attribute read produced."""

    AS_IS = "as-is"  # data, containers, functions, classes...
    METHOD = "method"  # C methods, bound or not: str.format/str.format_map come back guarded
    REFUSED = "refused"  # descriptors other than HELD_DESCRIPTORS


def value_rule(kind: type) -> Value:
    """How the guard hands out values of `kind` that an attribute read produced."""
    descriptor = any(name in vars(k) for k in kind.__mro__ for name in _DESCRIPTOR_METHODS)
    if descriptor and not issubclass(kind, tuple(HELD_DESCRIPTORS)):
        return Value.REFUSED
    if issubclass(kind, types.MethodDescriptorType | types.BuiltinFunctionType):
        return Value.METHOD
    return Value.AS_IS


def _rule(name: str, forbidden: Mapping[str, str], rules: tuple[str, str]) -> str | None:
    """`rules[0]` for a name with a leading underscore, `rules[1]` for one in `forbidden`."""
    if name.startswith("_"):
        return rules[0]
    return rules[1] if name in forbidden else None


def name_rule(name: str) -> str | None:
    """The rule a name (variable, function, argument, keyword) breaks, if any."""
    return _rule(name, FORBIDDEN_NAMES, ("underscore-name", "forbidden-name"))


def attribute_rule(name: str) -> str | None:
    """The rule reading or writing an attribute of this name breaks on any object, if any."""
    return _rule(name, FORBIDDEN_ATTRIBUTES, ("underscore-attribute", "internal-attribute"))


def pattern_rule(name: str) -> str | None:
    """The rule a `match` pattern breaks by reading this attribute (outside the guard), if any."""
    rule = attribute_rule(name)
    if rule is None and name in PATTERN_FORBIDDEN:
        return "pattern-attribute"
    return rule


# The builtins of the dialect, by reason. Each is safe to call from C code with any arguments.
BUILTINS: dict[str, str] = {
    **dict.fromkeys(("True", "False", "None"), "a constant"),
    **dict.fromkeys(
        (
            "bool",
            "int",
            "float",
            "complex",
            "str",
            "bytes",
            "bytearray",
            "list",
            "tuple",
            "set",
            "frozenset",
            "range",
            "slice",
        ),
        "a plain data type; its one attribute walker, str.format, comes back guarded",
    ),
    **dict.fromkeys(
        (
            "abs",
            "divmod",
            "pow",
            "round",
            "min",
            "max",
            "sum",
            "len",
            "hash",
            "id",
            "ord",
            "chr",
            "bin",
            "oct",
            "hex",
            "ascii",
            "repr",
            "sorted",
            "reversed",
            "all",
            "any",
            "callable",
        ),
        "a function of its arguments through their own dunder methods; calls back only into "
        "callables the program holds",
    ),
    "format": "calls the value's own `__format__`; no reachable type's spec walks attributes",
    **dict.fromkeys(
        ("isinstance", "issubclass"), "class tests; no reachable class matches unreadable kinds"
    ),
    **dict.fromkeys(
        ("iter", "next", "enumerate", "zip", "map", "filter"),
        "iteration over the program's values, calling only callables it holds",
    ),
    **dict.fromkeys(
        (
            "Exception",
            "ArithmeticError",
            "AssertionError",
            "AttributeError",
            "IndexError",
            "KeyError",
            "LookupError",
            "NameError",
            "NotImplementedError",
            "OverflowError",
            "RecursionError",
            "RuntimeError",
            "StopIteration",
            "TypeError",
            "UnicodeError",
            "ValueError",
            "ZeroDivisionError",
        ),
        "an exception class to raise and catch; none catches the sandbox's stop signals",
    ),
}

# Builtins the runtime provides in place of Python's, by reason.
RUNTIME_BUILTINS: dict[str, str] = {
    "dict": "the runtime's attribute dict: keys read and written as attributes",
    "print": "writes to the run's output, counted against its cap (no `file=`)",
    "HostError": "the exception a failed host call raises where its value is used",
}

_PURE = "a pure function of numbers or strings, in C"
_CONSTANT = "a constant"
_ITERATOR = "an iterator over the values it is given, calling only callables it is given"
_EXCEPTION = "an exception class, to catch"
_CLASS = "a value class in C: its methods take values, not names"
_LIBRARY = "a library function in Python: reads its arguments' values, walks no names"

# The `re` functions that take a pattern (and flags): the runtime's versions refuse re.DEBUG.
_RE_CALLS = (
    "compile",
    "search",
    "match",
    "fullmatch",
    "split",
    "findall",
    "finditer",
    "sub",
    "subn",
)

# The pre-imported modules as views: the members a program sees, each with why it is safe.
# Everything else a module holds (its imports, wrappers, attribute walkers) is not there.
MODULES: dict[str, dict[str, str]] = {
    "json": {
        "dumps": "runtime version: keyword options only; no `cls=` to instantiate",
        "loads": "runtime version: builds attribute dicts; no `cls=`, hooks or parse callbacks",
        "JSONDecodeError": _EXCEPTION,
    },
    "math": {
        **dict.fromkeys(
            (
                "acos",
                "acosh",
                "asin",
                "asinh",
                "atan",
                "atan2",
                "atanh",
                "cbrt",
                "ceil",
                "comb",
                "copysign",
                "cos",
                "cosh",
                "degrees",
                "dist",
                "erf",
                "erfc",
                "exp",
                "exp2",
                "expm1",
                "fabs",
                "factorial",
                "floor",
                "fmod",
                "frexp",
                "fsum",
                "gamma",
                "gcd",
                "hypot",
                "isclose",
                "isfinite",
                "isinf",
                "isnan",
                "isqrt",
                "lcm",
                "ldexp",
                "lgamma",
                "log",
                "log10",
                "log1p",
                "log2",
                "modf",
                "nextafter",
                "perm",
                "pow",
                "prod",
                "radians",
                "remainder",
                "sin",
                "sinh",
                "sqrt",
                "tan",
                "tanh",
                "trunc",
                "ulp",
            ),
            _PURE,
        ),
        **dict.fromkeys(("e", "inf", "nan", "pi", "tau"), _CONSTANT),
    },
    "re": {
        **dict.fromkeys(
            _RE_CALLS,
            "runtime version refusing re.DEBUG; patterns and replacement templates name groups, "
            "not attributes; a callable replacement is the program's own",
        ),
        "escape": _PURE,
        **dict.fromkeys(
            (
                "A",
                "ASCII",
                "I",
                "IGNORECASE",
                "L",
                "LOCALE",
                "M",
                "MULTILINE",
                "NOFLAG",
                "S",
                "DOTALL",
                "U",
                "UNICODE",
                "X",
                "VERBOSE",
                "RegexFlag",
            ),
            "flag constants",
        ),
        "error": _EXCEPTION,
        **dict.fromkeys(
            ("Pattern", "Match"), "the C types of patterns and matches, for isinstance"
        ),
    },
    "datetime": {
        **dict.fromkeys(("date", "time", "datetime", "timedelta", "timezone"), _CLASS),
        **dict.fromkeys(("UTC", "MINYEAR", "MAXYEAR"), _CONSTANT),
    },
    "itertools": dict.fromkeys(
        (
            "accumulate",
            "chain",
            "combinations",
            "combinations_with_replacement",
            "compress",
            "count",
            "cycle",
            "dropwhile",
            "filterfalse",
            "groupby",
            "islice",
            "pairwise",
            "permutations",
            "product",
            "repeat",
            "starmap",
            "takewhile",
            "tee",
            "zip_longest",
        ),
        _ITERATOR,
    ),
    "collections": {
        **dict.fromkeys(
            ("Counter", "OrderedDict", "defaultdict", "deque", "ChainMap"),
            "a container class: holds the program's values, calls only callables it is given",
        ),
        "namedtuple": "builds a tuple class from identifiers it validates (no underscores); "
        "its `__match_args__` are those plain names",
    },
    "statistics": {
        **dict.fromkeys(
            (
                "mean",
                "fmean",
                "geometric_mean",
                "harmonic_mean",
                "median",
                "median_low",
                "median_high",
                "median_grouped",
                "mode",
                "multimode",
                "quantiles",
                "pstdev",
                "pvariance",
                "stdev",
                "variance",
                "covariance",
                "correlation",
                "linear_regression",
            ),
            _LIBRARY,
        ),
        "NormalDist": "a value class in Python: numbers in, numbers out",
        "StatisticsError": _EXCEPTION,
    },
    "random": {
        **dict.fromkeys(
            (
                "random",
                "randint",
                "randrange",
                "choice",
                "choices",
                "sample",
                "shuffle",
                "uniform",
                "triangular",
                "gauss",
                "normalvariate",
                "lognormvariate",
                "expovariate",
                "vonmisesvariate",
                "gammavariate",
                "betavariate",
                "paretovariate",
                "weibullvariate",
                "getrandbits",
                "randbytes",
                "seed",
                "getstate",
                "setstate",
            ),
            "the run's seeded generator (seeded at start, so replays repeat it)",
        ),
        "Random": "a generator of the program's own, seeded as it says",
    },
    "string": {
        **dict.fromkeys(
            (
                "ascii_letters",
                "ascii_lowercase",
                "ascii_uppercase",
                "digits",
                "hexdigits",
                "octdigits",
                "printable",
                "punctuation",
                "whitespace",
            ),
            _CONSTANT,
        ),
        "capwords": _LIBRARY,
        "Template": "`$name` templates look names up as mapping keys, never as attributes",
    },
    "functools": {
        "reduce": "folds the program's values with a callable it holds",
        "partial": "a callable over a callable the program holds; `func`/`args`/`keywords` give "
        "back only what it was given",
        "cmp_to_key": "wraps a comparison callable the program holds",
        **dict.fromkeys(
            ("lru_cache", "cache"),
            "runtime version: memoizes a callable the program holds (see REPLACED_MEMBERS)",
        ),
    },
    "operator": {
        **dict.fromkeys(
            (
                "abs",
                "add",
                "and_",
                "concat",
                "contains",
                "countOf",
                "delitem",
                "eq",
                "floordiv",
                "ge",
                "getitem",
                "gt",
                "iadd",
                "iand",
                "iconcat",
                "ifloordiv",
                "ilshift",
                "imatmul",
                "imod",
                "imul",
                "index",
                "indexOf",
                "inv",
                "invert",
                "ior",
                "ipow",
                "irshift",
                "is_",
                "is_not",
                "isub",
                "itruediv",
                "ixor",
                "le",
                "length_hint",
                "lshift",
                "lt",
                "matmul",
                "mod",
                "mul",
                "ne",
                "neg",
                "not_",
                "or_",
                "pos",
                "pow",
                "rshift",
                "setitem",
                "sub",
                "truediv",
                "truth",
                "xor",
            ),
            "the function form of an operator or subscript the dialect allows anyway",
        ),
        "itemgetter": "subscripts, which the dialect allows anyway",
        "call": "the function form of a call; every callable is safe to call from C",
    },
    "decimal": {
        **dict.fromkeys(("Decimal", "Context", "DecimalTuple"), _CLASS),
        **dict.fromkeys(
            ("getcontext", "setcontext", "localcontext"), "the run's decimal context (C)"
        ),
        **dict.fromkeys(
            ("BasicContext", "ExtendedContext", "DefaultContext"),
            "template contexts; their settings are checked by C setters",
        ),
        **dict.fromkeys(
            (
                "ROUND_UP",
                "ROUND_DOWN",
                "ROUND_CEILING",
                "ROUND_FLOOR",
                "ROUND_HALF_UP",
                "ROUND_HALF_DOWN",
                "ROUND_HALF_EVEN",
                "ROUND_05UP",
                "MAX_PREC",
                "MAX_EMAX",
                "MIN_EMIN",
                "MIN_ETINY",
            ),
            _CONSTANT,
        ),
        **dict.fromkeys(
            (
                "DecimalException",
                "Clamped",
                "Rounded",
                "Inexact",
                "Subnormal",
                "Underflow",
                "Overflow",
                "DivisionByZero",
                "FloatOperation",
                "InvalidOperation",
                "ConversionSyntax",
                "DivisionImpossible",
                "DivisionUndefined",
                "InvalidContext",
            ),
            _EXCEPTION,
        ),
    },
    "fractions": {"Fraction": "a value class in Python: numbers and numeric strings in"},
    "textwrap": {
        **dict.fromkeys(("wrap", "fill", "shorten", "dedent", "indent"), _LIBRARY),
        "TextWrapper": "a text wrapper whose options are set by keyword at construction",
    },
}

# Library code reachable from the views that reads attributes, frames or code by computed names,
# by qualified name, with why each use is safe. A test crawls every Python function reachable
# from the views (and the functions they call) and finds no other.
LIBRARY_WALKERS: dict[str, str] = {
    "collections.namedtuple": "evaluates a lambda built from field names it has validated as "
    "identifiers without underscores; reads its caller's module name from the caller's frame",
    "collections.abc.MutableMapping.update": "asks its argument for `keys`, a fixed name",
    "collections.abc.MappingView.__repr__": "a fixed template over the view itself",
    "collections.abc._check_methods": "ABC subclass hooks: a class's `__dict__` for fixed "
    "method names",
    "types.DynamicClassAttribute.__init__": "enum's member descriptor, built when the enum "
    "class is (not by programs): asks its getter for `__isabstractmethod__`",
    "enum.Enum.__dir__": "runs only for dir(), which is not in the dialect",
    "enum.Flag._missing_": "asks for `_value_`, a fixed name",
    "functools.update_wrapper": "lru_cache copies a fixed list of names (`__name__`, `__doc__`, "
    "`__dict__`...) from the callable it memoizes onto its wrapper; the runtime's lru_cache and "
    "cache hand it only the program's own functions, whose `__dict__` is empty (nothing can "
    "store attributes on them), or a closure of their own (see REPLACED_MEMBERS)",
    "random.Random.__init_subclass__": "runs only for subclasses; the dialect defines no classes",
    "string.Template.__init_subclass__": "runs only for subclasses; the dialect defines no classes",
}

# View members the runtime replaces with its own version, by reason (see the members above).
REPLACED_MEMBERS: dict[tuple[str, str], str] = {
    ("json", "dumps"): "`cls=` instantiates any class the program names",
    ("json", "loads"): "values must be attribute dicts; `cls=`, hooks and parse callbacks run "
    "arbitrary callables over internal parser state",
    **dict.fromkeys(
        (("re", name) for name in _RE_CALLS),
        "re.DEBUG (also reachable as a number) prints the pattern to the process's stdout",
    ),
    **dict.fromkeys(
        (("functools", "lru_cache"), ("functools", "cache")),
        "the wrapper takes a copy of the memoized callable's `__dict__` (update_wrapper): for a "
        "class, its whole namespace (`str.format` raw, properties, class-method wrappers), "
        "readable on the wrapper as plain attributes; anything but the program's own functions is "
        "memoized through a closure, which has nothing to copy",
    ),
}

ALLOWED_MODULES = tuple(MODULES)
