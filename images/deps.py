"""Installs genmesh's dependencies, with those of the given extras, as pyproject.toml lists them.

The images install these in a layer of their own, below the package: a change of the sources then
rebuilds only the small layer holding the package, not the gigabytes under it.
Usage: python deps.py [EXTRA...]   (with pyproject.toml beside it)
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project["optional-dependencies"]
    return [*project["dependencies"], *(r for extra in extras for r in optional[extra])]


if __name__ == "__main__":
    wanted = requirements(Path(__file__).with_name("pyproject.toml"), sys.argv[1:])
    subprocess.run([sys.executable, "-m", "pip", "install", *wanted], check=True)
