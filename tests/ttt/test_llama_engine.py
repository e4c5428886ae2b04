"""The llama.cpp engine on the embedded SmolLM2 model, called in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from genmesh.ttt.engine import ChatMessage, GenerationChunk, PromptTooLongError, SamplingParams
from genmesh.ttt.llama_engine import LlamaCppEngine
from genmesh.ttt.models import default_gguf

pytest.importorskip("llama_cpp")

FRANCE = [
    ChatMessage("system", "You are a helpful assistant."),
    ChatMessage("user", "What is the capital of France?"),
]


@pytest.fixture(scope="module")
async def engine() -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(default_gguf(), context_size=2048)
    await engine.load()
    yield engine
    await engine.unload()


async def collect(stream: AsyncIterator[GenerationChunk]) -> tuple[str, list[GenerationChunk]]:
    chunks = [chunk async for chunk in stream]
    return "".join(c.text for c in chunks), chunks


async def test_greedy_answer_names_paris(engine: LlamaCppEngine) -> None:
    text, chunks = await collect(
        engine.generate(FRANCE, SamplingParams(temperature=0, max_tokens=40))
    )
    assert "Paris" in text
    assert chunks[-1].finish_reason in ("stop", "length")
    assert sum(c.prompt_tokens for c in chunks) > 5


async def test_same_seed_same_text(engine: LlamaCppEngine) -> None:
    params = SamplingParams(temperature=1.0, seed=1234, max_tokens=24)
    story = [ChatMessage("user", "Tell me a very short story about a cat.")]
    first, _ = await collect(engine.generate(story, params))
    second, _ = await collect(engine.generate(story, params))
    assert first == second


async def test_max_tokens_gives_length(engine: LlamaCppEngine) -> None:
    story = [ChatMessage("user", "Write a long essay about the history of Europe.")]
    _, chunks = await collect(engine.generate(story, SamplingParams(max_tokens=5)))
    assert sum(c.tokens for c in chunks) == 5
    assert chunks[-1].finish_reason == "length"


async def test_tokenize_round_trip(engine: LlamaCppEngine) -> None:
    text = "Hello, world! Ça va? 東京"
    pairs = engine.tokenize(text, add_special_tokens=False)
    assert "".join(piece for _, piece in pairs) == text
    assert engine.detokenize([t for t, _ in pairs]) == text


async def test_detokenize_rejects_unknown_ids(engine: LlamaCppEngine) -> None:
    with pytest.raises(ValueError, match="out of range"):
        engine.detokenize([1, 10**9])


async def test_prompt_longer_than_context_is_refused(engine: LlamaCppEngine) -> None:
    with pytest.raises(PromptTooLongError) as caught:
        engine.generate([ChatMessage("user", "word " * 3000)], SamplingParams())
    assert caught.value.context_size == 2048


async def test_closing_the_stream_stops_the_engine(engine: LlamaCppEngine) -> None:
    story = [ChatMessage("user", "Write a long essay about the history of Europe.")]
    stream = engine.generate(story, SamplingParams(max_tokens=2000))
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    # The worker notices within one token; once the engine is idle again the count is frozen.
    await engine.wait_idle()
    stopped_at = engine.generated_tokens
    await asyncio.sleep(0.5)
    assert engine.generated_tokens == stopped_at
    assert stopped_at < 2000
