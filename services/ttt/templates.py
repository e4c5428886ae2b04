"""Chat templates: parsing them, and the `chat_template` model option.

Templates are Jinja as Hugging Face defines them; they are parsed here the way transformers and
llama-cpp-python render them (sandboxed, with loop controls and the `{% generation %}` tag), so
a template this module accepts is one the engines can render.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox

from genmesh.runtime.settings import ConfigError


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks training targets in Hugging Face templates;
    it renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return list(parser.parse_statements(("name:endgeneration",), drop_needle=True))


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _Generation]
    )


def parse(template: str) -> jinja2.nodes.Template:
    """The template's syntax tree; `jinja2.TemplateSyntaxError` when it is no template."""
    return _environment().parse(template)


def read_option(value: str) -> str:
    """The `chat_template` option's template: the Jinja text itself or, without any Jinja
    delimiter in it, the path of a file holding it (as vLLM's `--chat-template` takes either).
    A file that is missing or a template that does not parse is a `ConfigError` at start-up,
    not a failure of every request."""
    text = value
    if "{{" not in value and "{%" not in value:
        path = Path(value).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"chat_template: cannot read {path}: {exc.strerror}") from None
    try:
        parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"chat_template: line {exc.lineno}: {exc.message}") from None
    return text
