"""TensorRT-LLM engine (NVIDIA GPUs only), written against its LLM API.

Untested here: the project's CI machine has no GPU, so its tests skip unless both a GPU and the
`tensorrt_llm` package are present. `LLM.generate_async(..., streaming=True)` is already async;
closing our iterator aborts the request in the in-flight batcher.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genmesh.ttt import tools
from genmesh.ttt.engine import (
    ChatMessage,
    EngineModelInfo,
    GenerationChunk,
    LocalEngine,
    SamplingParams,
    ToolUse,
)

if TYPE_CHECKING:
    from tensorrt_llm import LLM


def available() -> bool:
    """True where the package imports and a CUDA device is visible."""
    try:
        import tensorrt_llm  # noqa: F401
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class TensorRTLLMEngine(LocalEngine):
    """Serves a Hugging Face checkpoint or a built TensorRT-LLM engine folder."""

    engine = "tensorrt-llm"

    def __init__(
        self, path: Path, *, name: str | None = None, max_output_tokens: int = 0, **llm_args: Any
    ) -> None:
        super().__init__(path, name=name or path.name, max_output_tokens=max_output_tokens)
        self._llm_args = llm_args
        self._llm: LLM | None = None

    async def load(self) -> None:
        if not available():
            raise RuntimeError("TensorRT-LLM needs the tensorrt_llm package and a CUDA GPU")
        from tensorrt_llm import LLM

        self._llm = await asyncio.to_thread(LLM, model=str(self._path), **self._llm_args)

    async def unload(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.to_thread(llm.shutdown)

    @property
    def llm(self) -> LLM:
        return self._require(self._llm)

    def context_window(self) -> int:
        return int(getattr(self.llm.args, "max_seq_len", 0) or 0)

    def prompt_tokens(self, messages: list[ChatMessage], use: ToolUse | None) -> list[int]:
        chat, definitions = tools.template_inputs(messages, use, self.chat_template)
        prompt: list[int] = self.llm.tokenizer.apply_chat_template(
            chat, tools=definitions, add_generation_prompt=True, tokenize=True
        )
        return prompt

    def generate(
        self, messages: list[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        prompt, budget = self.prompt_and_budget(messages, params)
        return self._stream(prompt, params, budget)

    async def _stream(
        self, prompt: list[int], params: SamplingParams, budget: int
    ) -> AsyncIterator[GenerationChunk]:
        from tensorrt_llm import SamplingParams as TrtSampling

        sampling = TrtSampling(
            max_tokens=budget,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k or None,
            repetition_penalty=params.repeat_penalty,
            seed=params.seed,
        )
        result = self.llm.generate_async(prompt, sampling, streaming=True)
        first = True
        try:
            async for output in result:
                completion = output.outputs[0]
                tokens = len(completion.token_ids_diff)
                self.generated_tokens += tokens
                finish = completion.finish_reason if output.finished else None
                yield GenerationChunk(
                    text=completion.text_diff,
                    tokens=tokens,
                    finish_reason="length" if finish == "length" else finish and "stop",
                    prompt_tokens=len(prompt) if first else 0,
                )
                first = False
        finally:
            if not result.finished:
                result.abort()

    def tokenize(self, text: str, add_special_tokens: bool) -> list[tuple[int, str]]:
        tokenizer = self.llm.tokenizer
        ids: list[int] = tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return [(i, tokenizer.decode([i])) for i in ids]

    def detokenize(self, tokens: list[int]) -> str:
        if any(t < 0 for t in tokens):
            raise ValueError("token ids must not be negative")
        text: str = self.llm.tokenizer.decode(tokens)
        return text

    def info(self) -> EngineModelInfo:
        context = self.context_window() if self._llm is not None else 0
        return self._model_info(context, details={})
