"""The batcher's own repeat penalty and greedy argmax sample exactly as llama.cpp's sampler chain
does: the same texts as a batcher whose chain holds llama.cpp's penalties and greedy samplers."""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from genmesh.ttt import llama_engine
from genmesh.ttt.batching import PENALTY_LAST_N, Batcher, Sequence
from genmesh.ttt.engine import ChatMessage, SamplingParams
from genmesh.ttt.grammar import _TOKEN_DATA
from genmesh.ttt.llama_engine import LlamaCppEngine
from genmesh.ttt.models import default_gguf
from genmesh.ttt.threaded import TokenRun

QUESTIONS = ["List the days of the week, twice.", "Say 'bread' ten times."]


class ChainBatcher(Batcher):
    """Samples every token through one llama.cpp chain: penalties first, then the batcher's own
    chain, or llama.cpp's greedy sampler where the batcher takes the argmax."""

    def _sampler(self, params: SamplingParams, grammar: str | None) -> Any:
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        penalties = lib.llama_sampler_init_penalties(
            self._n_vocab, PENALTY_LAST_N, params.repeat_penalty, 0, 0
        )
        lib.llama_sampler_chain_add(chain, penalties)
        rest = super()._sampler(params, grammar)
        lib.llama_sampler_chain_add(chain, rest or lib.llama_sampler_init_greedy())
        return chain

    @contextmanager
    def _penalised(self, sequence: Sequence, index: int) -> Iterator[np.ndarray]:
        yield np.ctypeslib.as_array(
            self._lib.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,)
        )


async def loaded(monkeypatch: pytest.MonkeyPatch, batcher: type[Batcher]) -> LlamaCppEngine:
    monkeypatch.setattr(llama_engine, "Batcher", batcher)
    engine = LlamaCppEngine(default_gguf(), context_size=512, slots=2)
    await engine.load()
    return engine


@pytest.fixture(scope="module")
async def engines() -> AsyncIterator[tuple[LlamaCppEngine, LlamaCppEngine]]:
    with pytest.MonkeyPatch.context() as patch:
        ours = await loaded(patch, Batcher)
        chain = await loaded(patch, ChainBatcher)
    yield ours, chain
    for engine in (ours, chain):
        await engine.unload()


async def text(engine: LlamaCppEngine, question: str, params: SamplingParams) -> str:
    chunks = engine.generate([ChatMessage("user", question)], params)
    return "".join([chunk.text async for chunk in chunks])


@pytest.mark.parametrize("question", QUESTIONS)
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0, max_tokens=80, repeat_penalty=1.5),
        SamplingParams(temperature=0, max_tokens=80, repeat_penalty=0.8),
        SamplingParams(temperature=0.9, max_tokens=80, repeat_penalty=1.3, seed=7),
    ],
    ids=["greedy", "greedy-favouring-repeats", "seeded"],
)
async def test_same_text_as_llama_cpp_samplers(
    engines: tuple[LlamaCppEngine, LlamaCppEngine], question: str, params: SamplingParams
) -> None:
    ours, chain = engines
    expected = await text(chain, question, params)
    assert await text(ours, question, params) == expected
    unpenalised = replace(params, repeat_penalty=1.0)
    assert await text(chain, question, unpenalised) != expected, "the penalty changed nothing"


async def test_penalty_divides_positive_and_multiplies_negative_logits_as_llama_cpp(
    engines: tuple[LlamaCppEngine, LlamaCppEngine],
) -> None:
    """On made-up logits of both signs in the model's own buffer, the batcher's penalty gives
    exactly what llama.cpp's penalties sampler gives, and leaves the buffer as it was."""
    ours, _ = engines
    await ours.wait_idle()
    batcher = ours._batcher
    assert batcher is not None
    lib, n_vocab = batcher._lib, batcher._n_vocab
    buffer = np.ctypeslib.as_array(lib.llama_get_logits_ith(batcher._ctx, -1), shape=(n_vocab,))
    made_up = np.random.default_rng(0).normal(0, 4, n_vocab).astype(np.float32)
    buffer[:] = made_up
    recent = [int(t) for t in np.argsort(made_up)[::997]]  # from the most negative up
    params = SamplingParams(repeat_penalty=1.7)
    run = TokenRun(ours, [], params, 1, lambda _: None, threading.Event())
    sequence = Sequence(run, None, asyncio.get_running_loop(), lambda _: None)
    sequence.recent.extend(recent[-PENALTY_LAST_N:])
    with batcher._penalised(sequence, -1) as penalised:
        got = penalised.copy()
    assert np.array_equal(buffer, made_up), "the model's logits were not restored"

    candidates = np.zeros(n_vocab, dtype=_TOKEN_DATA)
    candidates["id"] = np.arange(n_vocab, dtype=np.int32)
    candidates["logit"] = made_up
    array = lib.llama_token_data_array(
        data=candidates.ctypes.data_as(lib.llama_token_data_p),
        size=n_vocab,
        selected=-1,
        sorted=False,
    )
    sampler = lib.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, 1.7, 0, 0)
    for token in sequence.recent:
        lib.llama_sampler_accept(sampler, token)
    lib.llama_sampler_apply(sampler, ctypes.byref(array))
    lib.llama_sampler_free(sampler)
    expected = candidates["logit"][np.argsort(candidates["id"])]
    assert (made_up[list(sequence.recent)] < 0).any() and (made_up[list(sequence.recent)] > 0).any()
    assert np.array_equal(got, expected)
