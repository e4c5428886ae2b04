"""The batcher's own repeat penalty and greedy argmax sample exactly as llama.cpp's sampler chain
does: the same texts and logprobs as a batcher whose chain holds llama.cpp's penalties and greedy
samplers, with and without a grammar."""

from __future__ import annotations

import asyncio
import ctypes
import re
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from genmesh.ttt import llama_engine
from genmesh.ttt.batching import PENALTY_LAST_N, Batcher, Sequence
from genmesh.ttt.engine import ChatMessage, Constraint, SamplingParams
from genmesh.ttt.grammar import candidate_array
from genmesh.ttt.llama_engine import LlamaCppEngine
from genmesh.ttt.models import default_gguf
from genmesh.ttt.threaded import TokenRun


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
        yield self._logits(index)


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


Logprobs = list[tuple[int, float, tuple[int, ...]]]


async def generation(
    engine: LlamaCppEngine, question: str, params: SamplingParams
) -> tuple[str, Logprobs, int]:
    """The text, each token's logprob with its alternatives' ids, and the tokens generated."""
    text, logprobs, tokens = "", [], 0
    async for chunk in engine.generate([ChatMessage("user", question)], params):
        text += chunk.text
        tokens += chunk.tokens
        logprobs += [
            (p.token_id, p.logprob, tuple(t.token_id for t in p.top)) for p in chunk.logprobs
        ]
    return text, logprobs, tokens


SPREADS = Constraint(regex="(bread|butter|jam|honey)( (bread|butter|jam|honey)){11}")
CASES = {
    # Every one but the grammar's runs past the penalty's window of 64 tokens (checked).
    "greedy": (
        "Write a long story about a cat.",
        SamplingParams(temperature=0, repeat_penalty=1.5),
    ),
    "greedy, favouring repeats": (
        "List the days of the week, twice.",
        SamplingParams(temperature=0, repeat_penalty=0.8),
    ),
    "seeded": (
        "Write a long story about a cat.",
        SamplingParams(temperature=0.9, repeat_penalty=1.3, seed=7),
    ),
    "grammar, greedy": (
        "List breakfast spreads.",
        SamplingParams(temperature=0, repeat_penalty=1.5, constraint=SPREADS),
    ),
    "logprobs": (
        "Describe your favourite city in detail.",
        SamplingParams(temperature=0, repeat_penalty=1.5, top_logprobs=3),
    ),
}


@pytest.mark.parametrize(("question", "params"), CASES.values(), ids=CASES.keys())
async def test_same_output_as_llama_cpp_samplers(
    engines: tuple[LlamaCppEngine, LlamaCppEngine], question: str, params: SamplingParams
) -> None:
    ours, chain = engines
    params = replace(params, max_tokens=100)
    expected = await generation(chain, question, params)
    assert await generation(ours, question, params) == expected
    text, _, tokens = expected
    if params.constraint:  # the reference shares the batcher's chain: the grammar is checked here
        assert re.fullmatch(SPREADS.regex or "", text), text
    else:
        assert tokens > PENALTY_LAST_N, f"ended early: {text!r}"
    unpenalised = replace(params, repeat_penalty=1.0)
    assert (await generation(chain, question, unpenalised))[0] != text, "the penalty did nothing"


async def test_penalty_divides_positive_and_multiplies_negative_logits_as_llama_cpp(
    engines: tuple[LlamaCppEngine, LlamaCppEngine],
) -> None:
    """On made-up logits of both signs in the model's own buffer, the batcher's penalty gives
    exactly what llama.cpp's penalties sampler gives, and leaves the buffer as it was."""
    ours, _ = engines
    await generation(ours, "Hello!", SamplingParams(max_tokens=2))  # logits to write over
    await ours.wait_idle()
    batcher = ours._batcher
    assert batcher is not None
    lib, n_vocab = batcher._lib, batcher._n_vocab
    buffer = batcher._logits(-1)
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

    candidates, array = candidate_array(lib, made_up)
    sampler = lib.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, 1.7, 0, 0)
    for token in sequence.recent:
        lib.llama_sampler_accept(sampler, token)
    lib.llama_sampler_apply(sampler, ctypes.byref(array))
    lib.llama_sampler_free(sampler)
    expected = candidates["logit"][np.argsort(candidates["id"])]
    assert (made_up[list(sequence.recent)] < 0).any() and (made_up[list(sequence.recent)] > 0).any()
    assert np.array_equal(got, expected)
