"""Text generation through the router on the real SmolLM2 model (llama.cpp)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from genmesh.client import Client, error_details, text_request
from genmesh.v1 import common_pb2, generation_pb2, tokenizer_pb2
from tests.ttt.conftest import CONTEXT, SMOL, Inference

FRANCE = "What is the capital of France?"
ESSAY = "Write a long essay about the history of Europe, century by century."


def greedy(max_tokens: int = 48, stop: tuple[str, ...] = ()) -> common_pb2.TextParameters:
    return common_pb2.TextParameters(temperature=0, max_tokens=max_tokens, stop=stop)


async def test_capital_of_france_is_paris(mesh: Client) -> None:
    response = await mesh.generate(text_request(FRANCE, parameters=greedy()))
    assert "Paris" in response.outputs[0].text
    assert response.finish_reason == common_pb2.FINISH_REASON_STOP
    assert response.usage.prompt_tokens > 5
    assert response.usage.completion_tokens > 0
    assert response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens
    )
    timings = response.timings
    assert timings.first_token.ToTimedelta() <= timings.total.ToTimedelta()
    # The time to first token, stage by stage: each measured, together within it.
    stages = [timings.routing, timings.input_processing, timings.prefill]
    assert all(stage.ToNanoseconds() > 0 for stage in stages)
    before_first = sum(s.ToNanoseconds() for s in [timings.queue, *stages])
    assert before_first <= timings.first_token.ToNanoseconds()


async def test_stream_deltas_add_up_to_the_final_text(mesh: Client) -> None:
    deltas: list[str] = []
    final = None
    async for event in mesh.generate_stream(text_request(FRANCE, parameters=greedy())):
        if event.HasField("text_delta"):
            deltas.append(event.text_delta.text)
        elif event.HasField("final"):
            final = event.final
    assert final is not None
    assert len(deltas) > 1
    assert "".join(deltas) == final.outputs[0].text


async def test_system_context_steers_the_answer(mesh: Client) -> None:
    request = text_request(
        "Who are you?", system="You are a pirate named Captain Bob.", parameters=greedy()
    )
    response = await mesh.generate(request)
    assert "Bob" in response.outputs[0].text


async def test_same_seed_same_text(mesh: Client) -> None:
    params = common_pb2.TextParameters(temperature=1.2, seed=42, max_tokens=32)
    story = "Tell me a short story about a cat."
    first = await mesh.generate(text_request(story, parameters=params))
    second = await mesh.generate(text_request(story, parameters=params))
    other = await mesh.generate(
        text_request(
            story, parameters=common_pb2.TextParameters(temperature=1.2, seed=7, max_tokens=32)
        )
    )
    assert first.outputs[0].text == second.outputs[0].text
    assert first.outputs[0].text != other.outputs[0].text


async def test_stop_sequence_is_honoured(mesh: Client) -> None:
    response = await mesh.generate(text_request(FRANCE, parameters=greedy(stop=("Paris",))))
    assert "Paris" not in response.outputs[0].text
    assert response.finish_reason == common_pb2.FINISH_REASON_STOP_SEQUENCE
    assert response.stop_sequence == "Paris"


async def test_max_tokens_gives_length(mesh: Client) -> None:
    response = await mesh.generate(text_request(ESSAY, parameters=greedy(max_tokens=5)))
    assert response.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert response.usage.completion_tokens == 5


async def test_tokenize_detokenize_round_trip(mesh: Client) -> None:
    text = "Hello, world! Ça va? 東京 is a city."
    tokens = await mesh.tokenizer.Tokenize(
        tokenizer_pb2.TokenizeRequest(text=text), metadata=mesh.metadata
    )
    assert len(tokens.tokens) == len(tokens.pieces) > 5
    assert "".join(tokens.pieces) == text
    back = await mesh.tokenizer.Detokenize(
        tokenizer_pb2.DetokenizeRequest(tokens=tokens.tokens), metadata=mesh.metadata
    )
    assert back.text == text
    count = await mesh.tokenizer.CountTokens(
        tokenizer_pb2.CountTokensRequest(text=text), metadata=mesh.metadata
    )
    assert count.count == len(tokens.tokens)


async def test_a_raw_prompt_is_continued_as_written(mesh: Client) -> None:
    """No chat template around it: the model continues the text, and its prompt is the text's
    own tokens (a template would add a dozen)."""
    text = "The capital of France is"
    parameters = common_pb2.TextParameters(temperature=0, max_tokens=8, raw_prompt=True)
    response = await mesh.generate(text_request(text, parameters=parameters))
    assert "Paris" in response.outputs[0].text
    tokens = await mesh.tokenizer.Tokenize(
        tokenizer_pb2.TokenizeRequest(text=text, add_special_tokens=True), metadata=mesh.metadata
    )
    assert response.usage.prompt_tokens == len(tokens.tokens)
    chat = await mesh.generate(text_request(text, parameters=greedy(max_tokens=1)))
    assert chat.usage.prompt_tokens > response.usage.prompt_tokens + 10
    # The same prompt as token ids, and ids the model does not have.
    ids = common_pb2.InputItem(tokens=common_pb2.TokenSequence(ids=tokens.tokens))
    by_ids = await mesh.generate(common_pb2.GenerateRequest(inputs=[ids], text=parameters))
    assert by_ids.outputs[0].text == response.outputs[0].text
    del ids.tokens.ids[1:]
    ids.tokens.ids.append(10**6)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.generate(common_pb2.GenerateRequest(inputs=[ids], text=parameters))
    assert "inputs" in error_details(caught.value).violations


async def test_many_token_ids_are_refused_or_decoded_at_once(mesh: Client) -> None:
    """Two million ids (6 MB) are refused for the context before any is decoded, and 400,000
    are detokenized in linear time (llama-cpp-python's own join took 98 s, on the event loop
    for a prompt: the service failed its health checks for minutes)."""
    many = [31791] * 2_000_000
    ids = common_pb2.InputItem(tokens=common_pb2.TokenSequence(ids=many))
    raw = common_pb2.TextParameters(raw_prompt=True, max_tokens=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.generate(common_pb2.GenerateRequest(inputs=[ids], text=raw), timeout=60)
    assert error_details(caught.value).reason == "PROMPT_TOO_LONG"
    request = tokenizer_pb2.DetokenizeRequest(tokens=many[:400_000])
    text = await mesh.tokenizer.Detokenize(request, metadata=mesh.metadata, timeout=60)
    assert len(text.text) >= 400_000


async def scored(mesh: Client, text: str, **parameters: Any) -> common_pb2.GenerateResponse:
    """`text` as a raw prompt with its tokens scored, and one token generated after it."""
    parameters = {"temperature": 0, "max_tokens": 1, "top_logprobs": 3, **parameters}
    request = text_request(
        text,
        parameters=common_pb2.TextParameters(raw_prompt=True, prompt_logprobs=True, **parameters),
    )
    return await mesh.generate(request)


async def test_a_prompt_is_scored_token_by_token(mesh: Client) -> None:
    """As lm-eval scores a continuation: each prompt token's log probability given the ones
    before it. The model knows Paris, not Berlin, is France's capital; and the score of a token
    in a prompt is the logprob the model gives it when it generates that token."""
    paris = await scored(mesh, "The capital of France is Paris")
    entries = paris.outputs[0].prompt_logprobs
    assert len(entries) == paris.usage.prompt_tokens
    assert "".join(e.token for e in entries) == "The capital of France is Paris"
    assert (entries[0].logprob, list(entries[0].top_logprobs)) == (0, [])
    for entry in entries[1:]:
        best = [a.logprob for a in entry.top_logprobs]
        assert len(best) == 3 and best == sorted(best, reverse=True)
        assert entry.logprob <= best[0] + 1e-6 and entry.logprob < 0
    berlin = await scored(mesh, "The capital of France is Berlin")
    assert berlin.outputs[0].prompt_logprobs[-1].logprob < entries[-1].logprob - 2
    # Every choice has the same prompt: the first choice carries its scores.
    twice = await scored(mesh, "The capital of France is Paris", n=2)
    assert [len(o.prompt_logprobs) for o in twice.outputs] == [len(entries), 0]
    asked = await scored(mesh, "The capital of France is", logprobs=True)
    generated = asked.outputs[0].logprobs[0]
    assert generated.token == entries[-1].token == " Paris"
    assert generated.logprob == pytest.approx(entries[-1].logprob, abs=0.1)


async def test_the_end_of_text_has_its_logprob(mesh: Client) -> None:
    """One entry per token the model sampled, its end-of-text included (as vLLM's): lm-eval
    takes the last entry for the generated token when it scores the ones before it."""
    chat = "<|im_start|>user\nWhat is 2+2? Answer with one digit.<|im_end|>\n"
    text = chat + "<|im_start|>assistant\n4"
    response = await scored(mesh, text, max_tokens=8, logprobs=True)
    output = response.outputs[0]
    assert response.finish_reason == common_pb2.FINISH_REASON_STOP, output.text
    assert len(output.logprobs) == response.usage.completion_tokens + 1
    assert output.logprobs[-1].token == "" and output.logprobs[-1].logprob < 0


async def test_a_long_text_is_tokenized_beside_a_generation(mesh: Client) -> None:
    """Three megabytes of text are 0.7 M tokens, whose ids and pieces (9 MB) are more than grpc's
    default 4 MiB a client takes; the tokenizer runs beside the batch's decoding thread."""
    text = "Hello, world! Ça va? 東京 is a city. " * 80_000
    generation = asyncio.ensure_future(mesh.generate(text_request(FRANCE, parameters=greedy())))
    tokens, count = await asyncio.gather(
        mesh.tokenizer.Tokenize(tokenizer_pb2.TokenizeRequest(text=text), metadata=mesh.metadata),
        mesh.tokenizer.CountTokens(
            tokenizer_pb2.CountTokensRequest(text=text), metadata=mesh.metadata
        ),
    )
    assert "".join(tokens.pieces) == text
    assert count.count == len(tokens.tokens) > 500_000
    assert "Paris" in (await generation).outputs[0].text


async def test_unknown_token_ids_are_invalid(mesh: Client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.tokenizer.Detokenize(
            tokenizer_pb2.DetokenizeRequest(tokens=[1, 2**30]), metadata=mesh.metadata
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tokens" in error_details(caught.value).violations


async def test_over_long_prompt_names_the_context_size(mesh: Client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.generate(text_request("lorem ipsum " * CONTEXT))
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "PROMPT_TOO_LONG"
    assert details.metadata["context_size"] == str(CONTEXT)
    assert int(details.metadata["prompt_tokens"]) > CONTEXT
    assert "inputs" in details.violations


async def test_bad_parameters_are_invalid_with_details(mesh: Client) -> None:
    params = common_pb2.TextParameters(temperature=-1, top_p=2, max_tokens=0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.generate(text_request(FRANCE, parameters=params))
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {"text.temperature", "text.top_p", "text.max_tokens"} <= set(details.violations)


async def test_cancel_mid_stream_stops_the_engine(mesh: Client, inference: Inference) -> None:
    call = mesh.generation.GenerateStream(
        generation_pb2.GenerateStreamRequest(
            request=text_request(ESSAY, parameters=common_pb2.TextParameters(max_tokens=1500))
        ),
        metadata=mesh.metadata,
    )
    before = (await inference.info(SMOL)).model.details["generated_tokens"]
    deltas = 0
    async for response in call:
        deltas += response.event.HasField("text_delta")
        if deltas == 3:
            break
    call.cancel()
    # Wait until the service released the model, then check the engine produces nothing more.
    stopped_at = (await inference.until_idle(SMOL))["generated_tokens"]
    await asyncio.sleep(0.5)
    assert (await inference.info(SMOL)).model.details["generated_tokens"] == stopped_at
    assert stopped_at - before < 1500
