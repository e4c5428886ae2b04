"""Bridges a blocking generation loop running in its own thread to an async iterator.

Engines whose generation loop blocks in C code run it in a dedicated thread (not the shared
executor, so a queue of waiting generations cannot starve tokenizer calls). The loop gets an
`emit` callback and an event that is set as soon as the consumer goes away; it checks the event
between tokens, which is what makes a client cancel stop the engine within one token.
"""

from __future__ import annotations

import abc
import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from genmesh.ttt.engine import (
    ChatMessage,
    GenerationChunk,
    LocalEngine,
    SamplingParams,
    TokenLogprob,
)

T = TypeVar("T")
Work = Callable[[Callable[[T], None], threading.Event], None]

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def stream_from_thread(work: Work[T]) -> AsyncIterator[T]:
    """Runs `work(emit, stop)` in a new thread and yields what it emits; closing the iterator
    sets `stop`."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    stop = threading.Event()

    def deliver(item: object) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()

    def run() -> None:
        try:
            work(deliver, stop)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            deliver(_Failure(exc))
        finally:
            deliver(_DONE)

    threading.Thread(target=run, name="engine-generate", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield cast(T, item)
    finally:
        stop.set()


@dataclass
class TokenRun:
    """One generation as its engine's thread sees it: what to produce, where chunks go and the
    stop flag (checked between tokens). `token` and `finish` keep every engine's chunks alike:
    the first chunk carries the prompt's size, the last one the finish reason."""

    engine: LocalEngine
    prompt: list[int]
    params: SamplingParams
    budget: int
    emit: Callable[[GenerationChunk], None]
    stop: threading.Event
    # What the engine's `compile` made of the request's constraint, if anything.
    compiled: Any = None
    produced: int = 0
    # The prompt's scores, when asked for, which the first chunk carries.
    prompt_logprobs: tuple[TokenLogprob, ...] = ()

    def token(self, text: str, logprob: TokenLogprob | None = None) -> None:
        """One generated token's text (and its logprob when asked for)."""
        self.produced += 1
        self.engine.generated_tokens += 1
        first = self.produced == 1
        self.emit(
            GenerationChunk(
                text=text,
                prompt_tokens=len(self.prompt) if first else 0,
                logprobs=(logprob,) if logprob else (),
                prompt_logprobs=self.prompt_logprobs if first else (),
            )
        )

    def finish(
        self,
        reason: Literal["stop", "length", "error"],
        text: str = "",
        logprob: TokenLogprob | None = None,
    ) -> None:
        """The last chunk: any text the decoder held back, why generation ended ("error": the
        engine could not go on, e.g. `grammar.sample_or_dead_end` found no token), and the end
        of generation token's logprob when it ended "stop" and logprobs were asked for."""
        self.emit(
            GenerationChunk(
                text=text,
                tokens=0,
                finish_reason=reason,
                logprobs=(logprob,) if logprob else (),
                prompt_tokens=0 if self.produced else len(self.prompt),
                prompt_logprobs=() if self.produced else self.prompt_logprobs,
            )
        )


class ThreadedEngine(LocalEngine):
    """A local engine whose token loop blocks: each generation runs `_produce` in its own thread."""

    def generate(
        self, messages: list[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        prompt, budget = self.prompt_and_budget(messages, params)
        compiled = self.compile(params)
        return stream_from_thread(
            lambda emit, stop: self._produce(
                TokenRun(self, prompt, params, budget, emit, stop, compiled)
            )
        )

    def compile(self, params: SamplingParams) -> Any:
        """The request's constraint in the engine's form, before generation starts so a bad one
        is refused at once (`ConstraintError`); engines without constraints have nothing to do."""
        return None

    @abc.abstractmethod
    def _produce(self, run: TokenRun) -> None:
        """Emits up to `run.budget` tokens, then `run.finish`; returns early once `run.stop` is
        set."""
