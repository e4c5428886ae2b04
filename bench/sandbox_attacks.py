"""The attack corpus (tests/sandbox/attacks.py) through genmesh, smolagents and RestrictedPython.

Each attack ends one of five ways in each system: contained, escaped (a canary secret, a sight only
a forbidden object gives, or a forged result reached the output), hung (no end within the
attack's wall-clock limit plus a grace), crashed (the run or its process died instead of ending
with an error; for the two in-process sandboxes, also a MemoryError: only this script's own
address-space cap stopped it) or harmed (the run after it, an ordinary program, came out
different; or the attack's `after` program did).

- genmesh: a real mesh (tests/sandbox/attack_mesh.py, the same oracle as the test), every
  isolation layer the machine offers in force.
- smolagents 1.26 `LocalPythonExecutor`, with the dialect's modules as its authorized imports and
  a 5 s timeout; RestrictedPython 9.0 `compile_restricted` with what a careful user passes:
  `safe_builtins` plus the pure builtins the corpus's programs use, `safer_getattr`, the guarded
  getitem/getiter/unpacking guards, `full_write_guard`, `PrintCollector`, and an `__import__`
  that allows only the dialect's modules.

How attacks are adapted for the two peers: every program starts with `import` of the dialect's
modules (genmesh pre-imports them); the library, if any, runs first; the last expression's value
is the result (smolagents does this itself; for RestrictedPython the script assigns it to a
variable before compiling); host functions are plain Python functions (the honest client's,
plus stand-ins for the mesh's generate_text, generate_image, speak and transcribe) and a failed
one raises `HostError`, which the programs can catch by that name; predefined globals are
variables. An attack's limits are genmesh's (`Program.limits`): the peers have no per-run CPU,
memory or output limits to set, so what ends a runaway program there is this script's timeout
(the same wall clock plus grace) or its address-space cap. Attacks on genmesh's own protocol
(replayed call logs, clients that misbehave) mean nothing for the peers and are counted as n/a.

Each peer runs in a worker subprocess, a fresh sandbox per program; a hung or crashed worker is
killed and replaced, and so is one whose next ordinary program came out different. The workers
get the same kinds of canaries as the mesh: secrets in their environment and a secrets file that
their config names.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import base64
import builtins
import json
import operator
import os
import random
import resource
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import command_line, emit
from tests.sandbox.attack_mesh import Canaries, Mesh, bound_seconds, ordinary
from tests.sandbox.attacks import (
    CLASSES,
    CORPUS,
    HOST_FUNCTIONS,
    MODULES,
    PROBE,
    SANDBOX_SECRET_VARIABLES,
    Attack,
    sighted,
)
from tests.support import ServiceProcess

SYSTEMS = ("genmesh", "smolagents", "restrictedpython")
ENDINGS = ("contained", "escaped", "hung", "crashed", "harmed")
# The in-process peers get this much address space (the script's guard for the machine).
WORKER_MEMORY_BYTES = 2 << 30
PEER_TIMEOUT_SECONDS = 5
IMPORTS = "import " + ", ".join(MODULES) + "\n"
# The builtins genmesh's programs have that RestrictedPython's safe sets leave out; all pure.
EXTRA_BUILTINS = (
    "all",
    "any",
    "ascii",
    "bin",
    "bytearray",
    "bytes",
    "dict",
    "divmod",
    "enumerate",
    "filter",
    "format",
    "frozenset",
    "iter",
    "list",
    "map",
    "max",
    "min",
    "next",
    "reversed",
    "set",
    "sorted",
    "sum",
    "tuple",
    "zip",
)
INPLACE: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd,
    "-=": operator.isub,
    "*=": operator.imul,
    "/=": operator.itruediv,
    "//=": operator.ifloordiv,
    "%=": operator.imod,
    "**=": operator.ipow,
    "|=": operator.ior,
    "&=": operator.iand,
}


class HostError(Exception):
    """A failed host call, by the name genmesh's programs catch it with."""


def texts_of(value: Any) -> Iterator[str]:
    """Every string a value shows: its strings, keys and the str() of anything else."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from texts_of(key)
            yield from texts_of(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from texts_of(item)
    elif value is not None:
        yield str(value)


# -- the peers' side (runs in a worker subprocess)


def host_functions(calls: list[str]) -> dict[str, Callable[..., Any]]:
    """The host functions a peer's program may call; each call's arguments go into `calls`."""

    def generate_text(
        prompt_text: str, system: str = "", max_tokens: int = 256, binding: str = ""
    ) -> str:
        if binding or not isinstance(max_tokens, int) or not 0 < max_tokens < 2**31:
            raise HostError("generate_text: invalid arguments")
        return prompt_text

    def generate_image(
        prompt_text: str, steps: int = 0, seed: int = 0, binding: str = ""
    ) -> list[Any]:
        if binding or not isinstance(steps, int) or steps < 0:
            raise HostError("generate_image: invalid arguments")
        return []

    def speak(text: str, voice: str = "", binding: str = "") -> list[Any]:
        return []

    def transcribe(audio: str, mime_type: str = "audio/wav", binding: str = "") -> str:
        try:
            base64.b64decode(audio, validate=True)
        except ValueError as exc:
            raise HostError(f"transcribe: {exc}") from None
        return ""

    def recorded(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(f"{name}{args!r}{kwargs!r}")
            return function(*args, **kwargs)

        call.__name__ = name
        return call

    functions: dict[str, Callable[..., Any]] = {
        "generate_text": generate_text,
        "generate_image": generate_image,
        "speak": speak,
        "transcribe": transcribe,
        **HOST_FUNCTIONS,
    }
    return {name: recorded(name, function) for name, function in functions.items()}


def run_smolagents(code: str, variables: dict[str, Any], calls: list[str]) -> tuple[Any, str]:
    from smolagents import local_python_executor  # type: ignore[import-untyped]

    executor = local_python_executor.LocalPythonExecutor(
        additional_authorized_imports=list(MODULES), timeout_seconds=PEER_TIMEOUT_SECONDS
    )
    executor.send_tools(host_functions(calls))
    executor.send_variables(variables)
    try:
        output = executor(code)
    finally:
        printed = str(executor.state.get("_print_outputs", ""))
    return output.output, printed


def restricted_globals() -> dict[str, Any]:
    """What a careful RestrictedPython user gives a program."""
    from RestrictedPython.Eval import default_guarded_getitem, default_guarded_getiter
    from RestrictedPython.Guards import (
        full_write_guard,
        guarded_iter_unpack_sequence,
        guarded_unpack_sequence,
        safe_builtins,
        safer_getattr,
    )
    from RestrictedPython.Limits import limited_builtins
    from RestrictedPython.PrintCollector import PrintCollector
    from RestrictedPython.Utilities import utility_builtins

    def allowed_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name not in MODULES:
            raise ImportError(f"{name} is not allowed")
        return __import__(name, *args, **kwargs)

    allowed = {**safe_builtins, **limited_builtins, **utility_builtins}
    allowed.update({name: getattr(builtins, name) for name in EXTRA_BUILTINS})
    allowed["__import__"] = allowed_import
    return {
        "__builtins__": allowed,
        "__name__": "program",
        "_getattr_": safer_getattr,
        "_getitem_": default_guarded_getitem,
        "_getiter_": default_guarded_getiter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_write_": full_write_guard,
        "_print_": PrintCollector,
        "_inplacevar_": lambda op, x, y: INPLACE[op](x, y),
        "_apply_": lambda f, *a, **k: f(*a, **k),
    }


def run_restricted(code: str, variables: dict[str, Any], calls: list[str]) -> tuple[Any, str]:
    from RestrictedPython.compile import compile_restricted

    tree = ast.parse(code)
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        assert isinstance(last, ast.Expr)
        target = ast.Name(id="attack_result", ctx=ast.Store())
        tree.body[-1] = ast.copy_location(ast.Assign(targets=[target], value=last.value), last)
    program = compile_restricted(ast.unparse(ast.fix_missing_locations(tree)), "<attack>", "exec")
    namespace = restricted_globals()
    namespace.update(host_functions(calls))
    namespace.update(variables)
    try:
        exec(program, namespace)
    finally:
        collector = namespace.get("_print")
        printed = collector() if callable(collector) else ""
    return namespace.get("attack_result"), printed


RUNNERS = {"smolagents": run_smolagents, "restrictedpython": run_restricted}


def worker(system: str) -> None:
    """Runs programs sent as JSON lines on stdin, one fresh sandbox each, answering on stdout.

    The answer goes to a duplicate of stdout, which is then pointed at /dev/null, so a program
    that prints to the real stdout cannot forge one."""
    answers = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    run = RUNNERS[system]
    run(IMPORTS + "1", {}, [])  # imports what the peer imports lazily, which may draw on random
    for line in sys.stdin:
        request = json.loads(line)
        random.seed(0)  # as genmesh does, so the ordinary program's result is comparable
        calls: list[str] = []
        variables = {"HostError": HostError, **request["globals"]}
        answer: dict[str, Any] = {"calls": calls}
        try:
            value, printed = run(request["code"], variables, calls)
            answer.update(value=list(texts_of(value)), printed=printed, repr=repr(value)[:2000])
        except BaseException as exc:  # the program's failure, whatever it is, is the answer
            chain = [exc, exc.__cause__, exc.__context__]
            memory = any(isinstance(e, MemoryError) for e in chain) or "MemoryError" in str(exc)
            answer.update(error=f"{type(exc).__name__}: {exc}"[:100_000], memory=memory)
        answers.write(json.dumps(answer, default=str) + "\n")
        answers.flush()


# -- the bench's side


@dataclass
class Peer:
    """A worker subprocess for one peer system, restarted whenever it hangs, dies or is harmed."""

    system: str
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    probe: Any = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--worker",
            self.system,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
            limit=64 << 20,
        )

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        self.process = None

    async def run(self, attack: Attack, timeout: float) -> dict[str, Any]:
        """One program's answer, or {"ending": "hung"|"crashed"} (the worker is then replaced)."""
        if self.process is None:
            await self.start()
        assert self.process is not None and self.process.stdin and self.process.stdout
        program = IMPORTS + (attack.library + "\n" if attack.library else "") + attack.code
        request = {"code": program, "globals": dict(attack.globals)}
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            await self.process.stdin.drain()
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except TimeoutError:
            await self.stop()
            return {"ending": "hung"}
        except (ConnectionError, ValueError):
            line = b""
        if not line:
            await self.stop()
            return {"ending": "crashed"}
        answer: dict[str, Any] = json.loads(line)
        return answer


def fingerprint(answer: dict[str, Any]) -> Any:
    return answer.get("ending") or answer.get("error") or answer.get("repr")


async def judge_peer(peer: Peer, attack: Attack, canaries: Canaries) -> tuple[str, str]:
    """How `attack` ends in one peer (see the module docstring), and why."""
    timeout = bound_seconds(attack)
    after = ordinary(attack.after)
    before = await peer.run(after, timeout) if attack.after else None
    answer = await peer.run(attack, timeout)
    if "ending" in answer:
        why = f"no answer within {timeout:g}s" if answer["ending"] == "hung" else "the worker died"
        return str(answer["ending"]), why
    seen = [*answer.get("value", []), answer.get("printed", ""), answer.get("error", "")]
    seen += answer["calls"]
    if names := canaries.found(seen):
        return "escaped", f"secret {', '.join(names)} in the output"
    if sights := sighted(attack, seen):
        return "escaped", f"{sights[0]!r} in {answer.get('repr') or answer.get('error')}"
    if answer.get("memory"):
        await peer.stop()
        return "crashed", "MemoryError: only the worker's address-space cap stopped it"
    if before is not None:
        again = await peer.run(after, timeout)
        if fingerprint(again) != fingerprint(before):
            await peer.stop()
            return "harmed", f"`after` gave {fingerprint(again)}, before {fingerprint(before)}"
    probe = await peer.run(ordinary(PROBE), timeout)
    if fingerprint(probe) != peer.probe:
        await peer.stop()
        return "harmed", f"the next ordinary program gave {fingerprint(probe)}"
    return "contained", ""


async def run_peer(
    system: str, attacks: list[Attack], env: dict[str, str], canaries: Canaries
) -> dict[str, tuple[str, str]]:
    peer = Peer(system, env)
    first = await peer.run(ordinary(PROBE), 60)
    if "error" in first or "ending" in first:
        raise RuntimeError(f"{system} cannot run the ordinary program: {first}")
    peer.probe = fingerprint(first)
    endings = {}
    try:
        for attack in attacks:
            if attack.peers and attack.client == "honest":
                endings[attack.name] = await judge_peer(peer, attack, canaries)
    finally:
        await peer.stop()
    return endings


def ending_of(problems: list[str]) -> str:
    """The one ending that counts for the table, most serious first."""
    for prefix, ending in (
        ("escaped", "escaped"),
        ("smuggled", "escaped"),
        ("hung", "hung"),
        ("crashed", "crashed"),
        ("harmed", "harmed"),
    ):
        if any(problem.startswith(prefix) for problem in problems):
            return ending
    return "contained"


async def run_genmesh(attacks: list[Attack]) -> dict[str, tuple[str, str]]:
    ttt = await asyncio.to_thread(ServiceProcess, "ttt", {})
    mesh = Mesh(ttt.address)
    endings = {}
    try:
        await asyncio.to_thread(mesh.start)
        await mesh.baseline()
        for attack in attacks:
            problems = await mesh.attack(attack)
            endings[attack.name] = ending_of(problems), "; ".join(problems)
    finally:
        await mesh.close()
        ttt.terminate()
    return endings


def peer_env(canaries: Canaries, folder: Path) -> dict[str, str]:
    """The workers' environment: canaries where the mesh has them, and a config naming a file."""
    secrets_file = folder / "secrets.yaml"
    secrets_file.write_text(yaml.safe_dump({"providers": {"upstream": canaries.file}}))
    config = folder / "mesh.yaml"
    config.write_text(yaml.safe_dump({"sandbox": {"secrets_file": str(secrets_file)}}))
    keys = {name: canaries.by_name[name] for name in SANDBOX_SECRET_VARIABLES}
    return {**os.environ, **keys, "GENMESH_CONFIG": str(config)}


async def run(systems: list[str], attacks: list[Attack]) -> dict[str, Any]:
    results: dict[str, dict[str, tuple[str, str]]] = {}
    if "genmesh" in systems:
        results["genmesh"] = await run_genmesh(attacks)
    canaries = Canaries()
    peers = [system for system in systems if system in RUNNERS]
    with tempfile.TemporaryDirectory(prefix="genmesh-attacks-") as folder:
        env = peer_env(canaries, Path(folder))
        endings = await asyncio.gather(
            *(run_peer(system, attacks, env, canaries) for system in peers)
        )
    results.update(zip(peers, endings, strict=True))
    table: dict[str, dict[str, dict[str, int]]] = {}
    for klass in (*CLASSES, "all"):
        chosen = [a for a in attacks if klass in ("all", a.klass)]
        table[klass] = {}
        for system, by_name in results.items():
            counts = Counter(by_name[a.name][0] for a in chosen if a.name in by_name)
            row = {ending: counts[ending] for ending in ENDINGS}
            row["n/a"] = sum(1 for a in chosen if a.name not in by_name)
            table[klass][system] = row
    outcomes = {
        system: {name: {"ending": e, "why": why} for name, (e, why) in by_name.items()}
        for system, by_name in results.items()
    }
    return {"attacks": len(attacks), "table": table, "outcomes": outcomes}


LABELS = {"genmesh": "genmesh", "smolagents": "smolagents", "restrictedpython": "RestrictedPython"}
COLUMNS = {
    "contained": "cont",
    "escaped": "esc",
    "hung": "hung",
    "crashed": "crash",
    "harmed": "harm",
    "n/a": "n/a",
}


def report(results: dict[str, Any]) -> None:
    table = results["table"]
    systems = list(results["outcomes"])
    width = 6 * len(COLUMNS)
    print(f"{'class':<18}{'n':>4}" + "".join(f"  {LABELS[s]:^{width}}" for s in systems))
    heads = "".join(f"{label:>6}" for label in COLUMNS.values())
    print(f"{'':<22}" + f"  {heads}" * len(systems))
    for klass, row in table.items():
        total = sum(row[systems[0]].values()) if systems else 0
        cells = "".join("  " + "".join(f"{row[s][c]:>6}" for c in COLUMNS) for s in systems)
        print(f"{klass:<18}{total:>4}{cells}")
    for system in systems:
        print(f"\n{LABELS[system]}, not contained:")
        for name, outcome in results["outcomes"][system].items():
            if outcome["ending"] != "contained":
                print(f"  {outcome['ending']:<8} {name}: {outcome['why'][:150]}")


def main() -> None:
    parser = command_line(__doc__)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--classes", nargs="+", choices=CLASSES, help="only these classes")
    parser.add_argument("--worker", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    attacks = [a for a in CORPUS if not args.classes or a.klass in args.classes]
    results = asyncio.run(run(args.systems, attacks))
    emit(results, args.json, report)


if __name__ == "__main__":
    main()
