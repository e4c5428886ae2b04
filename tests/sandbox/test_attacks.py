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

# Attacks the tree does not contain yet, and why; a mark goes when the fix for it lands (the
# marks are strict, so a fixed attack fails its test until its mark is removed).
NOT_YET: dict[str, str] = {}


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
    assert set(NOT_YET) <= set(names)
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


def _param(attack: Attack) -> object:
    reason = NOT_YET.get(attack.name)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(attack, id=attack.name, marks=marks)


@pytest.mark.parametrize("attack", [_param(attack) for attack in CORPUS])
async def test_attack_is_contained(mesh: Mesh, attack: Attack) -> None:
    problems = await mesh.attack(attack)
    assert not problems, f"{attack.klass}/{attack.name} ({attack.goal}):\n" + "\n".join(problems)
