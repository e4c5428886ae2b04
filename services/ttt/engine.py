"""The interface every text engine implements, in the spirit of vLLM's engine API.

The service layer owns protocol concerns (templating inputs into messages, <think> extraction,
stop sequences across chunk boundaries, usage, timings); an engine only turns chat messages into a
stream of text pieces and answers tokenizer questions.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from genmesh.ttt import templates

_T = TypeVar("_T")
Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text of an object


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant reply's calls
    tool_call_id: str = ""  # the call a tool message answers


@dataclass(frozen=True)
class Constraint:
    """Structured output: the output must be a JSON document valid against `json_schema`, match
    `regex` in full, be a sentence of the GBNF `grammar` or one of `choices` (exactly one set)."""

    json_schema: dict[str, Any] | None = None
    regex: str | None = None
    grammar: str | None = None
    choices: tuple[str, ...] = ()

    @property
    def field(self) -> str:
        """The request field that set it, for errors."""
        if self.json_schema is not None:
            return "text.constraint.json_schema"
        if self.regex is not None:
            return "text.constraint.regex"
        if self.grammar is not None:
            return "text.constraint.grammar"
        return "text.constraint.choices"


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})


@dataclass(frozen=True)
class ToolUse:
    """The tools offered and whether the model must call one (`required`: any of `allowed`)."""

    tools: tuple[Tool, ...]
    required: bool = False
    parallel: bool = True
    only: str = ""  # a named tool choice

    @property
    def allowed(self) -> tuple[Tool, ...]:
        return tuple(t for t in self.tools if not self.only or t.name == self.only)


@dataclass(frozen=True)
class SamplingParams:
    """Resolved sampling parameters: defaults, personality and request already merged."""

    max_tokens: int = 256
    # 0: greedy, the likeliest token every time (then top_p, top_k and seed do not apply).
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    # A repeated token's logit is divided by it (multiplied when negative); 1: none. Which
    # tokens count as repeated is the engine's choice (llama.cpp: the last 64 generated).
    repeat_penalty: float = 1.1
    # OpenAI's: subtracted from the logit of a token the output holds (once; per occurrence).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # Added to these token ids' logits.
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    # End-of-text tokens are banned until this many are generated (max_tokens when ignore_eos).
    min_tokens: int = 0
    ignore_eos: bool = False
    # None: a fresh seed per generation.
    seed: int | None = None
    stop: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    constraint: Constraint | None = None
    # Tools the model may call (its output then holds <tool_call> blocks, see `tools`).
    tools: ToolUse | None = None
    # Per token logprobs with this many alternatives (None: no logprobs).
    top_logprobs: int | None = None
    # Choices per request: the service runs one generation per choice.
    n: int = 1
    # The one user message is the whole prompt, tokenized as it stands (no chat template), or
    # these ids when the request gave ids.
    raw_prompt: bool = False
    prompt_ids: tuple[int, ...] = ()
    # Score the prompt's tokens too, with this many alternatives each (None: do not).
    prompt_logprobs: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    text: bytes
    logprob: float
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class GenerationChunk:
    """A piece of generated text; the last chunk of a generation sets finish_reason."""

    text: str
    tokens: int = 1
    # "error": the engine could not go on (a grammar no token can continue).
    finish_reason: Literal["stop", "length", "stop_sequence", "error", None] = None
    stop_sequence: str = ""
    prompt_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()
    # On the first chunk, when asked for: every prompt token's, the first's logprob 0.
    prompt_logprobs: tuple[TokenLogprob, ...] = ()


# What every engine that samples here through a grammar of its own (llama.cpp's, llguidance's)
# serves; each adds what its sampler also allows.
GRAMMAR_FEATURES = frozenset(
    {"json_schema", "regex", "grammar", "choices", "tools", "raw_prompt", "min_tokens"}
)


class PromptTooLongError(ValueError):
    """The templated prompt does not fit the context window (the service: INVALID_ARGUMENT)."""

    def __init__(self, prompt_tokens: int, context_size: int) -> None:
        super().__init__(
            f"the prompt has {prompt_tokens} tokens but the context holds {context_size}"
        )
        self.prompt_tokens = prompt_tokens
        self.context_size = context_size


class ConstraintError(ValueError):
    """A constraint the engine cannot compile (the service: INVALID_ARGUMENT naming `field`), or
    with `limit` one beyond what the engine can enforce (FAILED_PRECONDITION naming `field`)."""

    def __init__(self, field: str, message: str, *, limit: bool = False) -> None:
        super().__init__(message)
        self.field = field
        self.limit = limit


# Token entries at most in one response: n x max_tokens x (top_logprobs + 1) generated, and
# prompt tokens x (top_logprobs + 1) scored.
MAX_LOGPROB_ENTRIES = 200_000


def check_prompt_scores(prompt_tokens: int, params: SamplingParams) -> None:
    """Refuses to score a prompt whose entries would pass the cap (ConstraintError)."""
    top = params.prompt_logprobs
    if top is not None and prompt_tokens * (top + 1) > MAX_LOGPROB_ENTRIES:
        raise ConstraintError(
            "text.prompt_logprobs",
            f"prompt tokens x (top_logprobs + 1) must be at most {MAX_LOGPROB_ENTRIES}; "
            f"the prompt has {prompt_tokens} tokens",
        )


class UnsupportedError(ValueError):
    """A request feature the engine cannot serve (the service: FAILED_PRECONDITION naming
    `field`)."""

    def __init__(self, engine: str, field: str, what: str) -> None:
        super().__init__(f"the engine {engine} cannot {what}")
        self.field = field


@dataclass(frozen=True)
class EngineModelInfo:
    name: str
    engine: str
    context_size: int
    max_output_tokens: int
    supports_vision: bool = False
    supports_audio: bool = False
    size_bytes: int = 0
    details: dict[str, Any] = field(default_factory=dict)


class TextEngine(abc.ABC):
    """One loaded model. Engines may block in C code, so they must keep the event loop free
    (run blocking work in a worker thread) and check for cancellation between tokens."""

    name: str
    # What the engine serves beyond plain sampling: constraint kinds ("json_schema", "regex",
    # "grammar", "choices"), "tools" (calls it can make valid), "logprobs", "prompt_logprobs",
    # "raw_prompt", "penalties" (OpenAI's and logit bias) and "min_tokens". The service
    # refuses a request asking for anything else with FAILED_PRECONDITION.
    features: frozenset[str] = frozenset()
    # The Jinja chat template the loaded engine renders prompts with ("": it renders none itself,
    # as a remote endpoint); the service gives tools to it as data when it writes them itself
    # (`tools.conversation`).
    chat_template: str = ""

    @abc.abstractmethod
    async def load(self) -> None:
        """Loads weights; called once before the service reports SERVING."""

    async def unload(self) -> None:  # noqa: B027 - optional hook
        """Frees weights; the default has nothing to free."""

    @abc.abstractmethod
    def generate(
        self, messages: list[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        """Streams the completion. Closing the iterator (client cancel, deadline) must stop work
        within one token."""

    # The tokenizer's methods are CPU work on texts of up to megabytes: the service runs them in
    # a worker thread, beside generation, so they must not touch what generating sequences use.
    @abc.abstractmethod
    def tokenize(self, text: str, add_special_tokens: bool) -> list[tuple[int, str]]:
        """Token ids with their text pieces."""

    def token_ids(self, text: str, add_special_tokens: bool) -> list[int]:
        """The ids alone; an engine that has them without the pieces gives them so."""
        return [token for token, _ in self.tokenize(text, add_special_tokens)]

    def count_tokens(self, text: str, add_special_tokens: bool) -> int:
        return len(self.token_ids(text, add_special_tokens))

    @abc.abstractmethod
    def detokenize(self, tokens: list[int]) -> str:
        """The text of a token sequence."""

    @abc.abstractmethod
    def info(self) -> EngineModelInfo:
        """What the model is and can do."""


class LocalEngine(TextEngine):
    """An engine serving weights from a local path: what every such engine does alike (the output
    cap, the token counter, the prompt budget, the model info) lives here once."""

    engine: str

    def __init__(
        self, path: Path, *, name: str, max_output_tokens: int = 0, chat_template: str = ""
    ) -> None:
        self.name = name
        self._path = path
        self._max_output_tokens = max_output_tokens
        # The `chat_template` option, read and checked now so a bad one stops the start-up:
        # it replaces the model's own template (as vLLM's and llama-server's --chat-template).
        self._template_option = templates.read_option(chat_template) if chat_template else ""
        self.generated_tokens = 0

    def _require(self, value: _T | None) -> _T:
        """`value`, which exists only while the model is loaded."""
        if value is None:
            raise RuntimeError(f"model {self.name} is not loaded")
        return value

    @abc.abstractmethod
    def prompt_tokens(self, messages: list[ChatMessage], use: ToolUse | None) -> list[int]:
        """The messages rendered with the chat template, as token ids; the template gets the
        tools of `use` when it writes them itself (`tools.template_inputs`)."""

    @abc.abstractmethod
    def context_window(self) -> int:
        """The loaded model's context size in tokens (0: unknown)."""

    def prompt_and_budget(
        self, messages: list[ChatMessage], params: SamplingParams
    ) -> tuple[list[int], int]:
        """The prompt's tokens and how many the generation may produce: what the request asks,
        capped by the room the prompt leaves in the context and by the model's output cap."""
        if params.raw_prompt:
            # A raw prompt has the model's own special tokens (its BOS).
            prompt = list(params.prompt_ids) or self.token_ids(messages[0].content, True)
        else:
            prompt = self.prompt_tokens(messages, params.tools)
        check_prompt_scores(len(prompt), params)
        context = self.context_window()
        if context and len(prompt) >= context:
            raise PromptTooLongError(len(prompt), context)
        budget = params.max_tokens
        if context:
            budget = min(budget, context - len(prompt))
        if self._max_output_tokens:
            budget = min(budget, self._max_output_tokens)
        return prompt, budget

    def _model_info(
        self, context_size: int, details: dict[str, Any], size_bytes: int = 0
    ) -> EngineModelInfo:
        return EngineModelInfo(
            name=self.name,
            engine=self.engine,
            context_size=context_size,
            max_output_tokens=self._max_output_tokens or context_size,
            size_bytes=size_bytes,
            details={"path": str(self._path), "generated_tokens": self.generated_tokens, **details},
        )
