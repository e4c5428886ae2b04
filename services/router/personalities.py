"""Personalities in the LOLLMS folder format, discovered from configured folders.

A personality is a folder holding a `config.yaml` (LOLLMS fields: name, author, version,
personality_description, personality_conditioning, model_temperature, model_n_predicts,
model_top_k, model_top_p, model_repeat_penalty, anti_prompts, disclaimer, tags, icon,
script_path, ...; other LOLLMS fields are kept and ignored). It is known by its folder name,
as LOLLMS keys personalities. Its conditioning becomes the system prompt, its model parameters
sit between the binding's defaults and the request's, and its anti-prompts become stop
sequences. With `script_path`, its workflow is a sandbox-dialect program that the router runs
through the sandbox service, never in its own process.

A personality that cannot be loaded is reported at startup and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from genmesh.router.settings import PersonalityOverride
from genmesh.runtime import errors, telemetry
from genmesh.sandbox import dialect
from genmesh.v1 import catalog_pb2, common_pb2

log = logging.getLogger(__name__)
CONFIG_FILE = "config.yaml"


class PersonalityConfig(BaseModel):
    """The LOLLMS `config.yaml` fields genmesh uses; `binding` and `model` are extensions."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    author: str = ""
    version: str = ""
    category: str = ""
    personality_description: str = ""
    personality_conditioning: str = ""
    model_temperature: float | None = Field(default=None, ge=0, le=5)
    model_n_predicts: int | None = Field(default=None, gt=0)
    model_top_k: int | None = Field(default=None, ge=0)
    model_top_p: float | None = Field(default=None, gt=0, le=1)
    model_repeat_penalty: float | None = Field(default=None, gt=0)
    anti_prompts: list[str] = []
    disclaimer: str = ""
    tags: list[str] = []
    icon: str = ""
    script_path: str = ""
    binding: str = ""
    model: str = ""

    @field_validator(
        "author",
        "version",
        "category",
        "personality_description",
        "personality_conditioning",
        "disclaimer",
        "icon",
        "script_path",
        "binding",
        "model",
        mode="before",
    )
    @classmethod
    def _text(cls, value: object) -> object:
        """LOLLMS files write versions as numbers and leave fields empty (null)."""
        if value is None:
            return ""
        return str(value) if isinstance(value, int | float) else value

    @field_validator("anti_prompts", "tags", mode="before")
    @classmethod
    def _list(cls, value: object) -> object:
        return [] if value is None else value


@dataclass(frozen=True)
class Personality:
    """A loaded personality folder."""

    # The folder's name: what requests name it by, whatever its config's display name says.
    key: str
    folder: Path
    config: PersonalityConfig
    # The workflow program's source, for scripted personalities.
    script: str = ""

    @property
    def scripted(self) -> bool:
        return bool(self.script)

    def text_parameters(self) -> common_pb2.TextParameters:
        """The personality's sampling parameters; unset ones fall through to the binding's."""
        c = self.config
        params = common_pb2.TextParameters(stop=c.anti_prompts)
        if c.model_n_predicts is not None:
            params.max_tokens = c.model_n_predicts
        if c.model_temperature is not None:
            params.temperature = c.model_temperature
        if c.model_top_p is not None:
            params.top_p = c.model_top_p
        if c.model_top_k is not None:
            params.top_k = c.model_top_k
        if c.model_repeat_penalty is not None:
            params.repeat_penalty = c.model_repeat_penalty
        return params

    def conditioning(self) -> common_pb2.InputItem | None:
        text = self.config.personality_conditioning.strip()
        if not text:
            return None
        return common_pb2.InputItem(
            kind=common_pb2.CONTENT_KIND_TEXT, role=common_pb2.INPUT_ROLE_SYSTEM_CONTEXT, text=text
        )

    def info(self) -> catalog_pb2.Personality:
        c = self.config
        return catalog_pb2.Personality(
            name=self.key,
            author=c.author,
            version=c.version,
            description=c.personality_description.strip(),
            category=c.category or self.folder.parent.name,
            tags=c.tags,
            scripted=self.scripted,
            disclaimer=c.disclaimer.strip(),
        )


class PersonalityError(Exception):
    """A personality folder that cannot be used; the message names the file and the field."""


def load(folder: Path) -> Personality:
    path = folder / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PersonalityError(f"{path}: cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise PersonalityError(f"{path}: must be a mapping of fields")
    try:
        config = PersonalityConfig.model_validate(data)
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(config)'}: {e['msg']}" for e in exc.errors()
        )
        raise PersonalityError(f"{path}: {fields}") from None
    script = ""
    if config.script_path:
        script_file = (folder / config.script_path).resolve()
        if not script_file.is_relative_to(folder.resolve()) or not script_file.is_file():
            raise PersonalityError(
                f"{path}: script_path: '{config.script_path}' is not a file in the folder"
            )
        script = script_file.read_text(encoding="utf-8")
        try:
            dialect.parse(script, str(script_file))
        except dialect.DialectError as exc:
            raise PersonalityError(f"{script_file}: not a sandbox program: {exc}") from None
    return Personality(folder.name, folder, config, script)


def _config_folders(root: Path) -> Iterable[Path]:
    """Folders holding a config.yaml, as `<root>/<name>` or `<root>/<category>/<name>`."""
    for path in sorted(root.rglob(CONFIG_FILE)):
        folder = path.parent
        if folder == root or len(folder.relative_to(root).parts) > 2:
            continue
        if (folder.parent / CONFIG_FILE).is_file() and folder.parent != root:
            continue  # inside another personality (e.g. its assets)
        yield folder


def _skip(what: str, error: str) -> None:
    log.warning("personality skipped", extra={"fields": {"personality": what, "error": error}})


class Personalities:
    """The enabled personalities, by name."""

    def __init__(self, personalities: Mapping[str, Personality] | None = None) -> None:
        self.by_name = dict(personalities or {})

    @classmethod
    def discover(
        cls, folders: Iterable[Path], overrides: Mapping[str, PersonalityOverride]
    ) -> Personalities:
        found: dict[str, Personality] = {}
        for root in folders:
            if not root.is_dir():
                _skip(str(root), "personality folder does not exist")
                continue
            for folder in _config_folders(root):
                if folder.name in found:
                    _skip(str(folder), f"a personality named '{folder.name}' was found first")
                    continue
                try:
                    found[folder.name] = load(folder)
                except PersonalityError as exc:
                    _skip(str(folder), str(exc))
        for name in sorted(overrides.keys() - found.keys()):
            _skip(name, "named in the settings but not found in any personality folder")
        enabled = {
            name: p
            for name, p in found.items()
            if overrides.get(name, PersonalityOverride()).enabled
        }
        telemetry.event(log, "personalities loaded", names=sorted(enabled))
        return cls(enabled)

    def get(self, name: str) -> Personality:
        personality = self.by_name.get(name)
        if personality is None:
            raise errors.not_found(
                f"unknown personality '{name}'", "personality", name, "personality"
            )
        return personality

    def listed(self) -> list[catalog_pb2.Personality]:
        return [self.by_name[name].info() for name in sorted(self.by_name)]
