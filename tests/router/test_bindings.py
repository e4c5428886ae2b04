"""Binding instances from the config file and from a bindings folder, validated at startup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from genmesh.client import Client, text_request
from genmesh.v1 import catalog_pb2, common_pb2
from tests.support import API_KEY, ServiceProcess, echo_binding, router_config


def start_failure(tmp_path: Path, router: dict[str, Any]) -> str:
    """Starts a router that must refuse its configuration; its error output."""
    config = tmp_path / "mesh.yaml"
    config.write_text(yaml.safe_dump({"router": router}))
    env = {**os.environ, "GENMESH_API_KEY": API_KEY, "GENMESH_CONFIG": str(config)}
    done = subprocess.run(
        [sys.executable, "-m", "genmesh", "serve", "router"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


async def test_bindings_folder_adds_instances(ttt: ServiceProcess, tmp_path: Path) -> None:
    folder = tmp_path / "bindings"
    folder.mkdir()
    file_binding = {
        "tasks": ["text"],
        "addresses": [ttt.address],
        "engine": "echo",
        "model": "echo",
        "default": True,
        "parameters": {"max_tokens": 3},
        "extra": {"repeat": 2},
    }
    (folder / "short_echo.yaml").write_text(yaml.safe_dump(file_binding))
    router = ServiceProcess(
        "router", router_config([echo_binding(ttt.address)], bindings_folder=str(folder))
    )
    try:
        async with Client(router.address, API_KEY) as client:
            listed = await client.list_bindings()
            assert [(b.name, b.is_default) for b in listed] == [
                ("echo", False),
                ("short_echo", True),
            ]
            assert listed[1].replicas == listed[1].healthy_replicas == 1
            # The default text binding is the file's, with its default parameters and extras.
            response = await client.generate(text_request("ab"))
            assert response.binding == "short_echo"
            assert response.outputs[0].text == "aba"
            assert response.finish_reason == common_pb2.FINISH_REASON_LENGTH
            only_text = await client.catalog.ListBindings(
                catalog_pb2.ListBindingsRequest(task=common_pb2.TASK_IMAGE),
                metadata=client.metadata,
            )
            assert not only_text.bindings
    finally:
        router.terminate()


def test_a_bad_binding_file_is_named_with_its_field(tmp_path: Path) -> None:
    folder = tmp_path / "bindings"
    folder.mkdir()
    (folder / "typo.yaml").write_text(
        yaml.safe_dump({"tasks": ["text"], "addresses": ["localhost"], "modle": "x"})
    )
    error = start_failure(tmp_path, {"bindings_folder": str(folder)})
    assert f"{folder / 'typo.yaml'}: addresses" in error
    assert f"{folder / 'typo.yaml'}: modle" in error


def test_bad_default_parameters_are_named(tmp_path: Path) -> None:
    binding = {**echo_binding("127.0.0.1:1"), "parameters": {"temprature": 0.5}}
    error = start_failure(tmp_path, {"bindings": [binding]})
    assert "router.bindings.0" in error
    assert "temprature" in error
    assert str(tmp_path / "mesh.yaml") in error


def test_duplicate_names_across_the_folder_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "bindings"
    folder.mkdir()
    (folder / "echo.yaml").write_text(
        yaml.safe_dump({"tasks": ["text"], "addresses": ["127.0.0.1:1"]})
    )
    error = start_failure(
        tmp_path, {"bindings": [echo_binding("127.0.0.1:1")], "bindings_folder": str(folder)}
    )
    assert "duplicate names ['echo']" in error
