"""llama.cpp engine (GGUF) through llama-cpp-python.

By default concurrent generations share decode steps (continuous batching, `batching.Batcher`):
`slots` sequences run in one context of `context_size` tokens per slot, each with its own
sampler, and the service's per-model limit (the one admission point) admits as many requests as
there are slots; a prompt that starts as a slot's last one did reuses its cached prefix
(`prefix_reuse`). With `batching=False` one `Llama` context serves generations one at a time in a
worker thread with the `Llama.generate` loop, as before. Either way a cancellation is seen
between two tokens, constraints and tool calls become a GBNF grammar for llama.cpp's grammar
sampler (`grammar`), and logprobs come from the logits of each step.
"""

from __future__ import annotations

import asyncio
import codecs
import random
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from genmesh.runtime.cpus import usable_cpus
from genmesh.ttt import grammar, penalties, tools
from genmesh.ttt.batching import Batcher, end_of_text
from genmesh.ttt.engine import (
    GRAMMAR_FEATURES,
    ChatMessage,
    ConstraintError,
    EngineModelInfo,
    GenerationChunk,
    SamplingParams,
    TokenLogprob,
    ToolUse,
)
from genmesh.ttt.threaded import ThreadedEngine, TokenRun

if TYPE_CHECKING:
    from llama_cpp import Llama, LogitsProcessorList
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from llama_cpp.llama_grammar import LlamaGrammar


# Tokens one decode step takes (generating sequences' tokens first, then prompt chunks).
DEFAULT_BATCH_TOKENS = 256
# A slot's context when the settings leave it to the model: every slot reserves its own cache.
DEFAULT_SLOT_CONTEXT = 4096
BATCHING_TOKENIZER_CONTEXT = 64


def default_threads() -> int:
    """All the process's CPUs but one: llama.cpp's threads spin at barriers, so one descheduled
    thread stalls every token, and the service's own gRPC work (and the mesh's other services,
    which `genmesh up` runs on the same machine) need a core. Measured on a busy 2-core machine:
    1 thread ~20 tokens/s, 2 threads 1-4 tokens/s; on a quiet one 2 threads gave 1.6x one's."""
    return max(1, usable_cpus() - 1)


class LlamaCppEngine(ThreadedEngine):
    """Serves one GGUF file with the model's own chat template."""

    engine = "llama.cpp"
    features = GRAMMAR_FEATURES | {"logprobs", "penalties"}

    def __init__(
        self,
        model_path: Path,
        *,
        name: str | None = None,
        context_size: int = 0,
        threads: int | None = None,
        threads_batch: int | None = None,
        max_output_tokens: int = 0,
        batching: bool = True,
        slots: int = 1,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        prefix_reuse: bool = True,
        chat_template: str = "",
    ) -> None:
        super().__init__(
            model_path,
            name=name or model_path.stem,
            max_output_tokens=max_output_tokens,
            chat_template=chat_template,
        )
        if slots < 1 or batch_tokens < 1:
            raise TypeError("slots and batch_tokens must be at least 1")
        # Tokens per sequence (per slot when batching); 0: the model's trained context (capped
        # at DEFAULT_SLOT_CONTEXT when batching, since every slot reserves its whole cache).
        self._context_size = context_size
        self._threads = threads or default_threads()
        self._threads_batch = threads_batch or self._threads
        self._batching = batching
        if batching:  # the batcher decodes a prompt with the logits that score it
            self.features = self.features | {"prompt_logprobs"}
        self._slots = slots
        self._batch_tokens = batch_tokens
        self._prefix_reuse = prefix_reuse
        self._batcher: Batcher | None = None
        self._llm: Llama | None = None
        self._formatter: Jinja2ChatFormatter | None = None
        # One context: generations are serialised; the lock is taken inside the worker thread.
        self._lock = threading.Lock()
        self._ends: tuple[int, ...] = ()

    async def load(self) -> None:
        self._llm, self._formatter = await asyncio.to_thread(self._load)

    def _load(self) -> tuple[Llama, Jinja2ChatFormatter]:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = Llama(
            model_path=str(self._path),
            # Batching decodes in a context of its own: this one only serves the tokenizer.
            n_ctx=BATCHING_TOKENIZER_CONTEXT if self._batching else self._context_size,
            n_batch=BATCHING_TOKENIZER_CONTEXT if self._batching else 512,
            n_threads=self._threads,
            n_threads_batch=self._threads_batch,
            verbose=False,
        )
        if self._batching:
            trained = int(llm._model.n_ctx_train())
            self._context_size = self._context_size or min(trained, DEFAULT_SLOT_CONTEXT)
            self._batcher = Batcher(
                llm,
                slots=self._slots,
                context_per_slot=self._context_size,
                batch_tokens=self._batch_tokens,
                threads=self._threads,
                threads_batch=self._threads_batch,
                reuse_prefix=self._prefix_reuse,
            )
        else:  # the batcher keeps its own
            self._ends = end_of_text(llm)
        self.chat_template = self._template_option or llm.metadata.get(
            "tokenizer.chat_template", ""
        )
        if not self.chat_template:
            raise ValueError(f"{self._path.name} has no chat template in its metadata")
        model = llm._model
        eos, bos = llm.token_eos(), llm.token_bos()
        formatter = Jinja2ChatFormatter(
            template=self.chat_template,
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
        )
        return llm, formatter

    async def unload(self) -> None:
        await self.wait_idle()
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            await asyncio.to_thread(batcher.close)
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.to_thread(llm.close)

    async def wait_idle(self) -> None:
        """Returns once no generation holds the context (a cancelled one finishes its token)."""
        if self._batcher is not None:
            await asyncio.to_thread(self._batcher.wait_idle)
            return
        await asyncio.to_thread(self._lock.acquire)
        self._lock.release()

    def generate(
        self, messages: list[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        if self._batcher is None:
            return super().generate(messages, params)
        prompt, budget = self.prompt_and_budget(messages, params)
        text = self._grammar(params)
        run = TokenRun(self, prompt, params, budget, lambda _: None, threading.Event())
        return self._batcher.stream(run, text)

    @property
    def llm(self) -> Llama:
        return self._require(self._llm)

    def render(self, messages: list[ChatMessage], use: ToolUse | None) -> str:
        """The prompt text, rendered with the chat template."""
        chat, definitions = tools.template_inputs(messages, use, self.chat_template)
        response = self._require(self._formatter)(
            messages=cast(Any, chat), tools=cast(Any, definitions)
        )
        return str(response.prompt)

    def prompt_tokens(self, messages: list[ChatMessage], use: ToolUse | None) -> list[int]:
        """The templated prompt as token ids (the template writes the special tokens itself)."""
        text = self.render(messages, use)
        return list(self.llm.tokenize(text.encode(), add_bos=False, special=True))

    def context_window(self) -> int:
        if self._batcher is not None:
            return self._batcher.context_per_slot
        return int(self.llm.n_ctx())

    def compile(self, params: SamplingParams) -> LlamaGrammar | None:
        from llama_cpp.llama_grammar import LlamaGrammar

        text = self._grammar(params)
        return None if text is None else LlamaGrammar.from_string(text)

    def _grammar(self, params: SamplingParams) -> str | None:
        """The GBNF of the request's tool calls or constraint, checked by llama.cpp's own
        parser (which llama-cpp-python leaves to the sampler, where a bad one would crash)."""
        from llama_cpp import llama_cpp

        if params.tools is not None:
            field, text = "text.tools", grammar.tools_gbnf(params.tools)
        elif params.constraint is not None:
            field, text = params.constraint.field, grammar.constraint_gbnf(params.constraint)
        else:
            return None
        sampler = llama_cpp.llama_sampler_init_grammar(
            self.llm._model.vocab, text.encode(), b"root"
        )
        if not sampler:
            raise ConstraintError(field, "is not a GBNF grammar with a root rule llama.cpp parses")
        llama_cpp.llama_sampler_free(sampler)
        return text

    def _logprob(self, token: int, top: int) -> TokenLogprob:
        """The sampled token's log probability under the model and the `top` likeliest tokens,
        from the logits of the step that sampled it."""
        llm = self.llm
        logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
        logprobs = logits - np.logaddexp.reduce(logits.astype(np.float64))
        best = np.argpartition(-logprobs, top)[:top] if top else np.array([], dtype=int)
        best = best[np.argsort(-logprobs[best])]
        alternatives = tuple(
            TokenLogprob(int(t), bytes(llm.detokenize([int(t)])), float(logprobs[t])) for t in best
        )
        return TokenLogprob(
            token, bytes(llm.detokenize([token])), float(logprobs[token]), alternatives
        )

    def _produce(self, run: TokenRun) -> None:
        """Runs in a worker thread and checks `stop` before every token."""
        from llama_cpp.llama_cpp import llama_vocab_is_eog

        llm, params = self.llm, run.params
        vocab = llm._model.vocab
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        with self._lock:
            if params.seed is None:
                llm.set_seed(random.getrandbits(32))
            else:
                # Reusing a cached prompt prefix changes the numerics (and so the samples):
                # a seeded request evaluates its prompt from scratch to be reproducible.
                llm.set_seed(params.seed)
                cast(Any, llm).reset()  # untyped in llama-cpp-python
            tokens = llm.generate(
                run.prompt,
                logits_processor=_adjusting(len(run.prompt), params, self._ends),
                top_k=params.top_k,
                top_p=params.top_p,
                min_p=float(params.extra.get("min_p", 0.05)),
                temp=params.temperature,
                repeat_penalty=params.repeat_penalty,
                grammar=run.compiled,
            )
            finish: Literal["stop", "length"] = "length"
            try:
                for token in tokens:
                    if run.stop.is_set():
                        return
                    if llama_vocab_is_eog(vocab, token):
                        finish = "stop"
                        break
                    top = params.top_logprobs
                    logprob = self._logprob(token, top) if top is not None else None
                    run.token(decoder.decode(llm.detokenize([token])), logprob)
                    if run.produced >= run.budget:
                        break
            finally:
                tokens.close()
        run.finish(finish, decoder.decode(b"", final=True))

    def tokenize(self, text: str, add_special_tokens: bool) -> list[tuple[int, str]]:
        llm = self.llm
        ids = self.token_ids(text, add_special_tokens)
        # A character split over several byte tokens is given to the token that completes it,
        # so the pieces always join back into the text.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return [(i, decoder.decode(llm.detokenize([i], special=True))) for i in ids]

    def token_ids(self, text: str, add_special_tokens: bool) -> list[int]:
        special = add_special_tokens
        return list(self.llm.tokenize(text.encode(), add_bos=special, special=special))

    def detokenize(self, tokens: list[int]) -> str:
        llm = self.llm
        vocab = llm.n_vocab()
        bad = [t for t in tokens if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token ids out of range [0, {vocab}): {bad[:5]}")
        return _detokenized(llm, tokens).decode(errors="replace")

    def info(self) -> EngineModelInfo:
        llm = self._llm
        context = self.context_window() if llm is not None else self._context_size
        meta = llm.metadata if llm is not None else {}
        return self._model_info(
            context,
            size_bytes=self._path.stat().st_size,
            details={
                "architecture": meta.get("general.architecture", ""),
                "quantisation": _file_type(meta),
                "trained_context": int(
                    meta.get(f"{meta.get('general.architecture')}.context_length", 0)
                ),
                "running": self._lock.locked()
                or (self._batcher is not None and self._batcher.running > 0),
                "loaded": llm is not None,
                "batching": self._batching,
                "slots": self._slots if self._batching else 1,
                "reused_prompt_tokens": self._batcher.reused_tokens if self._batcher else 0,
            },
        )


def _file_type(meta: dict[str, str]) -> str:
    from llama_cpp import llama_cpp

    value = meta.get("general.file_type")
    names = {
        getattr(llama_cpp, n): n.removeprefix("LLAMA_FTYPE_MOSTLY_")
        for n in dir(llama_cpp)
        if n.startswith("LLAMA_FTYPE_MOSTLY_")
    }
    return names.get(int(value), value) if value is not None else ""


DETOKENIZE_SLICE = 512


def _detokenized(llm: Llama, tokens: list[int]) -> bytes:
    """llama-cpp-python joins the pieces by concatenation, quadratic in the ids (400k ids took
    98 s); slice by slice it is linear. Only the first slice may start with BOS, which it treats
    apart (it drops the space after it), as it does for the whole."""
    bos, out, start = llm.token_bos(), [], 0
    while start < len(tokens):
        end = min(start + DETOKENIZE_SLICE, len(tokens))
        while end < len(tokens) and tokens[end] == bos:
            end += 1
        out.append(bytes(llm.detokenize(tokens[start:end])))
        start = end
    return b"".join(out)


def _adjusting(
    prompt: int, params: SamplingParams, end_of_text: tuple[int, ...]
) -> LogitsProcessorList | None:
    """OpenAI's penalties and logit bias, and min_tokens, as llama-cpp-python's logits processor:
    first in its chain, it sees the whole vocabulary's candidates in id order (logprobs stay the
    model's)."""
    adjustments = penalties.Penalties(params, end_of_text)
    if not adjustments.active:
        return None
    from llama_cpp import LogitsProcessorList

    def adjusted(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        adjustments.catch_up(input_ids[prompt:])
        penalties.apply(scores, *adjustments.step())
        return scores

    return LogitsProcessorList([adjusted])
