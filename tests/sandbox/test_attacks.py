"""The attack corpus (attacks.py) against a real mesh: every attack contained, no secret out, no
harm to the next run (the oracle is in attack_mesh.py)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.sandbox.attack_mesh import Mesh
from tests.sandbox.attacks import CLASSES, CORPUS, Attack, sighted
from tests.support import ServiceProcess


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mesh(ttt: ServiceProcess) -> AsyncIterator[Mesh]:
    running = Mesh(ttt.address)
    await asyncio.to_thread(running.start)
    try:
        await running.baseline()
        yield running
    finally:
        await running.close()


def test_the_corpus_is_large_and_covers_every_class() -> None:
    names = [attack.name for attack in CORPUS]
    assert len(names) >= 150
    assert len(set(names)) == len(names)
    per_class = Counter(attack.klass for attack in CORPUS)
    assert all(per_class[klass] >= 5 for klass in CLASSES), per_class
    # An attack whose own text held a forbidden sight would be judged escaped for echoing it.
    for attack in CORPUS:
        assert not sighted(attack, [attack.code]), attack.name


async def test_the_oracle_sees_what_an_escape_shows(mesh: Mesh) -> None:
    """The oracle is not vacuous: output showing a forbidden sight is judged an escape, and a
    canary is recognised in the disguises `attacks.leaks` knows."""
    shows = Attack("shows", "frames", "prints a frame's repr", "print('<frame at 0x1>')\n1")
    assert any(problem.startswith("escaped") for problem in await mesh.attack(shows))
    secret = mesh.canaries.file
    assert mesh.canaries.found([f"<{secret[::-1]}>"]) == ["secrets file"]
    assert mesh.canaries.found([secret.encode().hex()]) == ["secrets file"]


@pytest.mark.parametrize("attack", CORPUS, ids=[attack.name for attack in CORPUS])
async def test_attack_is_contained(mesh: Mesh, attack: Attack) -> None:
    problems = await mesh.attack(attack)
    assert not problems, f"{attack.klass}/{attack.name} ({attack.goal}):\n" + "\n".join(problems)
