"""Runs raw CPython code in a real jailed child, past the dialect, as a program that broke it would.

The service's own `Zygote` starts the real zygote (with the environment and interpreter flags the
service uses) and forks the real child; the start frame carries code compiled here with plain
`compile` (the marshalled `program` the child accepts besides sources), so no rule of the dialect
or of its runtime guard applies. Every program begins with `PRELUDE`, which recovers what an
attacker would from the child's restricted namespace: the full builtins and `__import__` by a
subclass walk, `sys.modules` and ctypes (loaded in the zygote because the jail uses it), so
syscalls can be made directly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import marshal
import os
import signal
from dataclasses import dataclass, field
from typing import Any

import pyseccomp  # type: ignore[import-untyped]

from genmesh.sandbox import wire
from genmesh.sandbox.executor import Zygote

# Recovers the full builtins without naming a single builtin (the restricted namespace may lack
# them all), then runs BODY with them. BODY sees `B` (the builtins), `I` (__import__), sys, os,
# ctypes, `libc`, `sc` (a raw syscall by name, int arguments passed as longs, OSError on failure),
# `P` (the test's parameters) and `NR` (syscall numbers), and leaves what it found in `result`.
# With POISON, it first leaves marks in the child's state that the next run must not see.
PRELUDE = """
for c in ().__class__.__base__.__subclasses__():
    try:
        B = c.__init__.__globals__["__builtins__"]
        break
    except:
        pass
if B.__class__ is not {}.__class__:
    B = B.__dict__
I = B["__import__"]
sys = I("sys")
os = I("os")
ctypes = I("ctypes")
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def sc(name, *args):
    wide = [ctypes.c_long(a) if a.__class__ is (0).__class__ else a for a in args]
    r = libc.syscall(NR[name], *wide)
    if r == -1:
        e = ctypes.get_errno()
        raise B["OSError"](e, os.strerror(e))
    return r


if POISON:
    B["poisoned"] = True
    sys.modules["statistics"].mean = None
    os.environ["GENMESH_POISON"] = "1"
G = {"__builtins__": B, "B": B, "I": I, "sys": sys, "os": os, "ctypes": ctypes, "libc": libc,
     "sc": sc, "P": P, "NR": NR}
B["exec"](BODY, G)
__result__ = B["repr"](G.get("result"))
"""

# Syscalls the programs make by number, resolved for this machine's architecture.
SYSCALLS = (
    "bpf",
    "chroot",
    "clone",
    "clone3",
    "fcntl",
    "getcwd",
    "io_uring_setup",
    "keyctl",
    "mmap",
    "modify_ldt",
    "mount",
    "mprotect",
    "open_by_handle_at",
    "openat",
    "perf_event_open",
    "personality",
    "pidfd_open",
    "pidfd_send_signal",
    "prctl",
    "prlimit64",
    "process_vm_readv",
    "ptrace",
    "seccomp",
    "sendto",
    "setresuid",
    "socket",
    "tgkill",
    "unshare",
    "userfaultfd",
    "vfork",
)
NR = {name: pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) for name in SYSCALLS}


def program(body: str, params: dict[str, Any], *, poison: bool = False) -> str:
    """The raw source of a program: the prelude's recovery, then `body`."""
    return f"P = {params!r}\nNR = {NR!r}\nPOISON = {poison!r}\nBODY = {body!r}\n{PRELUDE}"


@dataclass
class Outcome:
    """How a raw run ended, and everything the child sent on the way."""

    done: bool = False
    value: Any = None
    error: dict[str, Any] | None = None
    status: int | None = None
    refused: str = ""
    hung: bool = False
    frames: list[bytes] = field(default_factory=list)

    @property
    def ending(self) -> str:
        """One word: "value", the exception's type, the killing signal, "refused" (a frame the
        service's reader rejects) or "hung"."""
        if self.hung:
            return "hung"
        if self.refused:
            return "refused"
        if self.error is not None:
            return str(self.error.get("type"))
        if self.done:
            return "value"
        if self.status is not None and os.WIFSIGNALED(self.status):
            return signal.Signals(os.WTERMSIG(self.status)).name
        return f"exit {self.status}"

    def text(self) -> str:
        """Everything the run produced, for searching."""
        return "\n".join(
            [repr(self.value), repr(self.error), self.refused]
            + [frame.decode(errors="replace") for frame in self.frames]
        )


async def run(zygote: Zygote, source: str, limits: dict[str, int], deadline: float) -> Outcome:
    """Runs `source` (raw CPython) in a fresh child of `zygote`, reading frames as the service
    does until "done", the child's end, a frame the service would refuse, or `deadline`."""
    child = await zygote.spawn()
    outcome = Outcome()
    code = marshal.dumps(compile(source, "<program>", "exec"))
    start = {
        "t": "start",
        "program": base64.b64encode(code).decode(),
        "library": "",
        "stubs": [],
        "ordered": [],
        "globals": {},
        "limits": limits,
    }
    try:
        reader, writer = await child.connect()
        writer.write(wire.encode(start))
        async with asyncio.timeout(deadline):
            message: dict[str, Any] = {}
            while message.get("t") != "done":
                header = await reader.readexactly(wire.HEADER.size)
                body = await reader.readexactly(wire.size(header))
                outcome.frames.append(body)
                message = wire.decode(body)
            outcome.done = True
            outcome.value, outcome.error = message.get("value"), message.get("error")
    except TimeoutError:
        outcome.hung = True
    except wire.FrameError as exc:
        outcome.refused = str(exc)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the child died: its status says how
    finally:
        child.close()
    with contextlib.suppress(TimeoutError):
        outcome.status = (await asyncio.wait_for(asyncio.shield(child.exited), 5)).status
    return outcome


def readable_memory(pid: int) -> list[bytes]:
    """Every readable mapping of process `pid` (this needs root, or the same user and ptrace
    rights over it), read through /proc."""
    regions = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r") or line.rstrip().endswith("[vsyscall]"):
                continue
            begin, end = (int(part, 16) for part in span.split("-"))
            with contextlib.suppress(OSError):
                mem.seek(begin)
                regions.append(mem.read(end - begin))
    return regions
