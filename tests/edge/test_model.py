"""A real model behind the edge: SmolLM2 on llama.cpp, through the official OpenAI SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from genmesh.client import Client
from genmesh.v1 import tokenizer_pb2
from tests.edge.conftest import sdk, streamed_completion, whole_completion
from tests.support import API_KEY, ServiceProcess

ASK: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What colour is the sky on a clear day?"},
]


@pytest.fixture
def smol(smol_edge: ServiceProcess) -> Iterator[OpenAI]:
    with sdk(smol_edge, timeout=300) as client:
        yield client


def test_seeded_chat_is_reproducible_streamed_or_not(smol: OpenAI) -> None:
    whole = smol.chat.completions.create(model="smollm2", messages=ASK, seed=5, max_tokens=24)
    text = whole.choices[0].message.content
    assert text
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage is not None
    assert 0 < whole.usage.completion_tokens <= 24
    again = smol.chat.completions.create(model="smollm2", messages=ASK, seed=5, max_tokens=24)
    assert again.choices[0].message.content == text
    chunks = list(
        smol.chat.completions.create(
            model="smollm2", messages=ASK, seed=5, max_tokens=24, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [
        whole.choices[0].finish_reason
    ]


def test_two_choices_with_a_budget(smol: OpenAI) -> None:
    completion = smol.chat.completions.create(
        model="smollm2", messages=ASK, n=2, max_completion_tokens=8, temperature=1.0, seed=11
    )
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.message.content for c in completion.choices)
    # Each choice has its own seed (11 and 12), so they differ.
    first, second = (c.message.content for c in completion.choices)
    assert first != second
    assert completion.usage is not None
    assert completion.usage.completion_tokens <= 16


async def test_penalties_and_logit_bias_reach_the_model(
    smol: OpenAI, smol_router: ServiceProcess
) -> None:
    """As vLLM takes them: a bias of 100 forces its token; penalties end a greedy loop."""
    async with Client(smol_router.address, API_KEY) as client:
        tokenized = await client.tokenizer.Tokenize(
            tokenizer_pb2.TokenizeRequest(text=" banana"), metadata=client.metadata
        )
    forced = smol.chat.completions.create(
        model="smollm2",
        messages=ASK,
        max_tokens=2,
        temperature=0,
        logit_bias={str(tokenized.tokens[0]): 100},
    )
    assert (forced.choices[0].message.content or "").split() == ["banana", "banana"]
    loop = "a, a, a, a, a, a, a, a,"
    penalised = smol.completions.create(
        model="smollm2",
        prompt=loop,
        max_tokens=12,
        temperature=0,
        presence_penalty=2,
        frequency_penalty=2,
    )
    free = smol.completions.create(model="smollm2", prompt=loop, max_tokens=12, temperature=0)
    assert free.choices[0].text != penalised.choices[0].text


def test_legacy_completion_continues_the_prompt_as_written(smol: OpenAI) -> None:
    """As vLLM's and llama-server's: no chat template, so the prompt's tokens are its own."""
    prompt = "The capital of France is"
    completion = smol.completions.create(
        model="smollm2", prompt=prompt, max_tokens=8, temperature=0, echo=True
    )
    assert completion.choices[0].text.startswith(prompt + " Paris")
    assert completion.usage is not None and completion.usage.prompt_tokens < 10


async def test_legacy_completion_scores_an_echoed_prompt(
    smol: OpenAI, smol_router: ServiceProcess
) -> None:
    """lm-eval's loglikelihood request: the prompt's tokens come back with their logprobs; its
    token ids (as lm-eval sends them by default) are the same prompt as its text."""
    prompt = "The capital of France is Paris"
    completion = smol.completions.create(
        model="smollm2", prompt=prompt, max_tokens=1, temperature=0, echo=True, logprobs=1
    )
    async with Client(smol_router.address, API_KEY) as client:
        tokenized = await client.tokenizer.Tokenize(
            tokenizer_pb2.TokenizeRequest(text=prompt, add_special_tokens=True),
            metadata=client.metadata,
        )
    by_ids = smol.completions.create(
        model="smollm2",
        prompt=list(tokenized.tokens),
        max_tokens=1,
        temperature=0,
        echo=True,
        logprobs=1,
    )
    assert by_ids.choices[0].text == completion.choices[0].text
    assert by_ids.choices[0].logprobs == completion.choices[0].logprobs
    streamed = smol.completions.create(
        model="smollm2",
        prompt=prompt,
        max_tokens=1,
        temperature=0,
        echo=True,
        logprobs=1,
        stream=True,
    )
    assert streamed_completion(streamed) == whole_completion(completion)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    assert completion.usage is not None
    prompt_tokens = completion.usage.prompt_tokens
    assert "".join(logprobs.tokens[:prompt_tokens]) == prompt
    assert logprobs.token_logprobs[0] is None
    assert logprobs.tokens[prompt_tokens - 1] == " Paris"
    assert -1 < logprobs.token_logprobs[prompt_tokens - 1] < 0
    assert logprobs.text_offset == [
        sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))
    ]


async def test_text_offsets_point_into_the_text_past_characters_split_across_tokens(
    smol: OpenAI, smol_router: ServiceProcess
) -> None:
    """An emoji is several byte-level tokens, each shown as U+FFFD; offsets count the text's
    characters (a split one once), so every token after it starts where its text stands. A
    prompt of ids that stops inside a character leaves it unfinished in the echo (U+FFFD) and
    the output begins with the rest (U+FFFD again)."""
    async with Client(smol_router.address, API_KEY) as client:
        tokenized = await client.tokenizer.Tokenize(
            tokenizer_pb2.TokenizeRequest(text="I love 🌍"), metadata=client.metadata
        )
    ids = list(tokenized.tokens)
    for prompt in ("I feel 🙂 about 🚀 launches", ids[:-1], ids[:-2]):
        asked: dict[str, Any] = {"prompt": prompt, "max_tokens": 8, "echo": True, "logprobs": 0}
        whole = smol.completions.create(model="smollm2", temperature=0, **asked)
        streamed = smol.completions.create(model="smollm2", temperature=0, stream=True, **asked)
        for choice in (whole_completion(whole)[0], streamed_completion(streamed)[0]):
            logprobs = choice["logprobs"]
            shown = [
                (token, offset)
                for token, offset in zip(logprobs["tokens"], logprobs["text_offset"], strict=True)
                if "\ufffd" not in token
            ]
            assert len(shown) < len(logprobs["tokens"]), "the emojis were whole tokens"
            for token, offset in shown:
                assert choice["text"][offset : offset + len(token)] == token, (prompt, token)
