"""Every value is typed by values.schema.json and documented in the chart's README."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.chart.conftest import CHART, VALUE_SETS, Tools, run

SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """The node with its `$ref` chain folded in: properties merged, strictness kept."""
    if "$ref" not in node:
        return node
    base = resolve(SCHEMA["$defs"][node["$ref"].removeprefix("#/$defs/")])
    merged = {
        **base,
        **node,
        "properties": {**base.get("properties", {}), **node.get("properties", {})},
    }
    del merged["$ref"]
    return merged


def is_strict(node: dict[str, Any]) -> bool:
    return node.get("additionalProperties") is False or node.get("unevaluatedProperties") is False


def undescribed(value: Any, node: dict[str, Any], path: str) -> list[str]:
    """Paths in value that the schema does not describe with a type of their own."""
    node = resolve(node)
    if "type" not in node and "enum" not in node and "const" not in node and "anyOf" not in node:
        return [path]
    if isinstance(value, dict) and is_strict(node):
        return [
            missing
            for key, child in value.items()
            for missing in undescribed(child, node["properties"].get(key, {}), f"{path}.{key}")
        ]
    return []


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_schema_types_every_value(value_set: str) -> None:
    path = VALUE_SETS[value_set] or CHART / "values.yaml"
    values = yaml.safe_load(path.read_text())
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(values))
    if value_set == "defaults":
        assert not errors, [e.message for e in errors]
    assert undescribed(values, SCHEMA, "") == []


def test_schema_is_strict_about_unknown_keys() -> None:
    """Every object in the defaults either forbids unknown keys or is documented as free-form."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def loose(value: Any, node: dict[str, Any], path: str) -> list[str]:
        node = resolve(node)
        if not isinstance(value, dict):
            return []
        if is_strict(node):
            return [
                p for k, v in value.items() for p in loose(v, node["properties"][k], f"{path}.{k}")
            ]
        return [] if node.get("description") else [path]

    assert loose(values, SCHEMA, "") == []


def test_readme_documents_every_value(tools: Tools, tmp_path: Path) -> None:
    """Bitnami's readme-generator fails on a value without `@param`; its tables must be current."""
    readme = tmp_path / "README.md"
    shutil.copy(CHART / "README.md", readme)
    result = run([tools.readme_generator, "--values", CHART / "values.yaml", "--readme", readme])
    assert result.returncode == 0, result.stdout + result.stderr
    assert readme.read_text() == (CHART / "README.md").read_text(), (
        "the README's parameter tables are stale: run "
        "readme-generator --values charts/genmesh/values.yaml --readme charts/genmesh/README.md"
    )
