"""The CPUs a service sizes its thread pools by: its affinity, capped by its cgroup's quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from genmesh.runtime.cpus import cpu_quota, usable_cpus


def cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({}, None),  # no cgroup files: no limit
        ({"cpu.max": "max 100000\n"}, None),  # v2, unlimited
        ({"cpu.max": "150000 100000\n"}, 1.5),  # v2: a limit of 1.5 CPUs
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1
        ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4.0),
        ({"cpu.max": "garbled\n"}, None),
    ],
)
def test_the_quota_is_read_from_either_cgroup_version(
    tmp_path: Path, files: dict[str, str], quota: float | None
) -> None:
    assert cpu_quota(cgroup(tmp_path, files)) == quota


def test_a_quota_caps_the_affinity_rounded_up(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(cgroup(tmp_path / "none", {})) == affinity
    assert usable_cpus(cgroup(tmp_path / "half", {"cpu.max": "50000 100000"})) == 1
    wide = f"{(affinity + 1) * 100000} 100000"
    assert usable_cpus(cgroup(tmp_path / "wide", {"cpu.max": wide})) == affinity
    if affinity > 1:
        assert usable_cpus(cgroup(tmp_path / "tight", {"cpu.max": "150000 100000"})) == 2


def test_without_affinity_every_core_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "sched_getaffinity")
    assert usable_cpus(cgroup(tmp_path, {})) == os.cpu_count()
