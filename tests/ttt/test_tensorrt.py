"""TensorRT-LLM: runs only where a CUDA GPU and the tensorrt_llm package exist (not in CI)."""

from __future__ import annotations

import pytest

from genmesh.ttt.engine import ChatMessage, SamplingParams
from genmesh.ttt.models import derived_model
from genmesh.ttt.tensorrt_engine import TensorRTLLMEngine, available

pytestmark = pytest.mark.skipif(not available(), reason="needs a CUDA GPU and tensorrt_llm")


async def test_tensorrt_engine_answers_and_cancels() -> None:
    engine = TensorRTLLMEngine(derived_model("hf"))
    await engine.load()
    try:
        messages = [ChatMessage("user", "What is the capital of France?")]
        text = "".join(
            [c.text async for c in engine.generate(messages, SamplingParams(temperature=0))]
        )
        assert "Paris" in text
        stream = engine.generate(messages, SamplingParams(max_tokens=1000))
        async for _ in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]
        assert engine.generated_tokens < 1000 + len(text)
    finally:
        await engine.unload()
