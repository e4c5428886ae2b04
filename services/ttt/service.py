"""InferenceService for text: turns typed requests into engine calls and streams the result.

Text protocol concerns live here so every engine gets them alike: chat messages from typed
inputs, parameter validation, stop sequences and <think> extraction across chunk boundaries and
usage; what every modality does alike (admission, cancellation, deadline, the final event and
trailers) is the runtime's `serve_infer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from genmesh.runtime import errors
from genmesh.runtime.errors import FieldViolation
from genmesh.runtime.inference import Context, InferenceServicer, InferJob, Requests, Stop
from genmesh.runtime.limiter import Slots
from genmesh.ttt import structured, tools
from genmesh.ttt.engine import (
    ChatMessage,
    ConstraintError,
    EngineModelInfo,
    GenerationChunk,
    PromptTooLongError,
    SamplingParams,
    TextEngine,
    ToolCall,
    UnsupportedError,
)
from genmesh.ttt.models import ModelEntry, scan
from genmesh.ttt.textstream import Split, TextOutput
from genmesh.v1 import common_pb2, inference_pb2

_T = TypeVar("_T")
# OpenAI's limit on logit_bias entries.
MAX_LOGIT_BIAS = 300
ROLES = {
    common_pb2.INPUT_ROLE_UNSPECIFIED: "user",
    common_pb2.INPUT_ROLE_USER_PROMPT: "user",
    common_pb2.INPUT_ROLE_SYSTEM_CONTEXT: "system",
    common_pb2.INPUT_ROLE_ASSISTANT_REPLY: "assistant",
    common_pb2.INPUT_ROLE_REFERENCE: "system",
    common_pb2.INPUT_ROLE_TOOL_RESULT: "tool",
}
FINISH = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "stop_sequence": common_pb2.FINISH_REASON_STOP_SEQUENCE,
    "tool_calls": common_pb2.FINISH_REASON_TOOL_CALLS,
    "error": common_pb2.FINISH_REASON_ERROR,
}


def raw_prompt(request: common_pb2.GenerateRequest) -> str | list[int]:
    """The user prompts' text, or their token ids, concatenated: a raw prompt has nothing else."""
    texts = (common_pb2.CONTENT_KIND_UNSPECIFIED, common_pb2.CONTENT_KIND_TEXT)
    payloads = {item.WhichOneof("payload") for item in request.inputs}
    for index, item in enumerate(request.inputs):
        user = ROLES.get(item.role) == "user" and item.kind in texts
        if not user or item.WhichOneof("payload") not in ("text", "tokens") or len(payloads) > 1:
            raise errors.invalid_argument(
                "a raw prompt is user-prompt text only",
                FieldViolation(
                    f"inputs[{index}]", "must be user-prompt text, or token ids, all alike"
                ),
            )
    if payloads == {"tokens"}:
        return [token for item in request.inputs for token in item.tokens.ids]
    prompt = "".join(item.text for item in request.inputs)
    if not prompt:
        raise errors.invalid_argument(
            "no prompt", FieldViolation("inputs", "a raw prompt needs some text")
        )
    return prompt


def chat_messages(request: common_pb2.GenerateRequest) -> list[ChatMessage]:
    """System items first (merged), then the conversation in order."""
    system: list[str] = []
    turns: list[ChatMessage] = []
    for index, item in enumerate(request.inputs):
        role = ROLES.get(item.role)
        if item.kind not in (common_pb2.CONTENT_KIND_UNSPECIFIED, common_pb2.CONTENT_KIND_TEXT):
            raise errors.invalid_argument(
                "text models take text inputs only",
                FieldViolation(f"inputs[{index}].kind", "must be CONTENT_KIND_TEXT"),
            )
        payload = item.WhichOneof("payload")
        calls_only = role == "assistant" and bool(item.tool_calls) and payload is None
        if role is None or not (payload == "text" or calls_only):
            raise errors.invalid_argument(
                "unsupported input for a text model",
                FieldViolation(f"inputs[{index}]", "needs a text payload and a text role"),
            )
        if item.tool_calls and role != "assistant":
            raise errors.invalid_argument(
                "only an assistant reply makes tool calls",
                FieldViolation(f"inputs[{index}].tool_calls", "needs INPUT_ROLE_ASSISTANT_REPLY"),
            )
        if item.tool_call_id and role != "tool":
            raise errors.invalid_argument(
                "only a tool result answers a tool call",
                FieldViolation(f"inputs[{index}].tool_call_id", "needs INPUT_ROLE_TOOL_RESULT"),
            )
        if role == "tool" and not item.tool_call_id:
            raise errors.invalid_argument(
                "a tool result names its call",
                FieldViolation(f"inputs[{index}].tool_call_id", "is required for tool results"),
            )
        if role == "system":
            system.append(item.text)
        else:
            calls = tuple(ToolCall(c.id, c.name, c.arguments) for c in item.tool_calls)
            turns.append(ChatMessage(role, item.text, calls, item.tool_call_id))  # type: ignore[arg-type]
    if not any(m.role == "user" for m in turns):
        raise errors.invalid_argument(
            "no user prompt", FieldViolation("inputs", "needs at least one user prompt")
        )
    head = [ChatMessage("system", "\n\n".join(system))] if system else []
    return head + turns


def sampling_params(request: common_pb2.GenerateRequest, info: EngineModelInfo) -> SamplingParams:
    text = request.text
    bad: list[FieldViolation] = []
    defaults = SamplingParams()
    max_tokens = text.max_tokens if text.HasField("max_tokens") else defaults.max_tokens
    if not 0 < max_tokens <= info.max_output_tokens:
        bad.append(FieldViolation("text.max_tokens", f"must be in 1..{info.max_output_tokens}"))
    if text.HasField("temperature") and not 0 <= text.temperature <= 5:
        bad.append(FieldViolation("text.temperature", "must be in [0, 5]"))
    if text.HasField("top_p") and not 0 < text.top_p <= 1:
        bad.append(FieldViolation("text.top_p", "must be in (0, 1]"))
    if text.HasField("top_k") and text.top_k < 0:
        bad.append(FieldViolation("text.top_k", "must be >= 0"))
    if text.HasField("repeat_penalty") and not 0 < text.repeat_penalty < math.inf:  # NaN too
        bad.append(FieldViolation("text.repeat_penalty", "must be a finite number > 0"))
    for name in ("presence_penalty", "frequency_penalty"):
        if text.HasField(name) and not -2 <= getattr(text, name) <= 2:  # NaN too
            bad.append(FieldViolation(f"text.{name}", "must be in [-2, 2]"))
    if len(text.logit_bias) > MAX_LOGIT_BIAS:
        bad.append(FieldViolation("text.logit_bias", f"at most {MAX_LOGIT_BIAS} token ids"))
    bad += [
        FieldViolation(f"text.logit_bias[{token}]", "must be a token id >= 0, biased by -100..100")
        for token, bias in text.logit_bias.items()
        if token < 0 or not -100 <= bias <= 100
    ]
    min_tokens = max_tokens if text.ignore_eos else text.min_tokens
    if not 0 <= text.min_tokens <= max_tokens:
        bad.append(FieldViolation("text.min_tokens", f"must be in 0..max_tokens ({max_tokens})"))
    constraint = structured.constraint(text, bad)
    tool_use = structured.tool_use(text, bad)
    if min_tokens and (constraint is not None or tool_use is not None):
        held = "text.ignore_eos" if text.ignore_eos else "text.min_tokens"
        ends = "not with a constraint or tools, whose grammar decides where the output ends"
        bad.append(FieldViolation(held, ends))
    top_logprobs = structured.top_logprobs(text, bad)
    if text.raw_prompt and tool_use is not None:
        bad.append(FieldViolation("text.raw_prompt", "takes no tools: they need the chat template"))
    n = structured.choices(text, bad)
    structured.response_size(n, max_tokens, top_logprobs, bad)
    if bad:
        raise errors.invalid_argument("invalid text parameters", *bad)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=text.temperature if text.HasField("temperature") else defaults.temperature,
        top_p=text.top_p if text.HasField("top_p") else defaults.top_p,
        top_k=text.top_k if text.HasField("top_k") else defaults.top_k,
        repeat_penalty=(
            text.repeat_penalty if text.HasField("repeat_penalty") else defaults.repeat_penalty
        ),
        presence_penalty=text.presence_penalty,
        frequency_penalty=text.frequency_penalty,
        logit_bias=dict(text.logit_bias),
        min_tokens=min_tokens,
        ignore_eos=text.ignore_eos,
        seed=text.seed if text.HasField("seed") else None,
        stop=tuple(text.stop),
        extra=json_format.MessageToDict(request.extra) if request.HasField("extra") else {},
        constraint=constraint,
        tools=tool_use,
        top_logprobs=top_logprobs,
        n=n,
        raw_prompt=text.raw_prompt,
        prompt_logprobs=text.top_logprobs if text.prompt_logprobs else None,
    )


def model_info_proto(info: EngineModelInfo, loaded: bool = True) -> common_pb2.ModelInfo:
    details = common_pb2.ModelInfo().details
    details.update(info.details)
    return common_pb2.ModelInfo(
        name=info.name,
        engine=info.engine,
        tasks=[common_pb2.TASK_TEXT],
        context_size=info.context_size,
        max_output_tokens=info.max_output_tokens,
        supports_vision=info.supports_vision,
        supports_audio=info.supports_audio,
        loaded=loaded,
        size_bytes=info.size_bytes,
        details=details,
    )


def entry_info_proto(entry: ModelEntry) -> common_pb2.ModelInfo:
    """A model found in the models folder but not loaded: what its metadata says."""
    engine = {"gguf": "llama.cpp", "onnx": "onnxruntime-genai", "hf": "transformers"}
    info = EngineModelInfo(
        name=entry.name,
        engine=engine[entry.format],
        context_size=entry.context_size,
        max_output_tokens=entry.context_size,
        supports_vision=entry.supports_vision,
        supports_audio=entry.supports_audio,
        size_bytes=entry.size_bytes,
        details={"path": str(entry.path), "format": entry.format, **entry.details},
    )
    return model_info_proto(info, loaded=False)


async def start_generation(
    engine: TextEngine, messages: list[ChatMessage], params: SamplingParams
) -> AsyncIterator[GenerationChunk]:
    """The engine's stream, started in a worker thread (templating, tokenizing and compiling a
    constraint's grammar block); a prompt that cannot fit becomes INVALID_ARGUMENT with the
    sizes, a constraint the engine cannot compile INVALID_ARGUMENT naming its field, one beyond
    the engine's limits FAILED_PRECONDITION naming its field."""
    try:
        return await asyncio.to_thread(engine.generate, messages, params)
    except ConstraintError as exc:
        if exc.limit:
            raise errors.ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{exc.field}: {exc}",
                reason="ENGINE_LIMIT",
                violations=[FieldViolation(exc.field, str(exc))],
            ) from None
        raise errors.invalid_argument(
            f"{exc.field}: {exc}", FieldViolation(exc.field, str(exc))
        ) from None
    except UnsupportedError as exc:
        raise structured.unsupported(exc) from None
    except PromptTooLongError as exc:
        raise prompt_too_long(exc) from None


def outside_vocabulary(field: str, exc: Exception) -> errors.ServiceError:
    """An engine's refusal of token ids it does not have (ValueError, OverflowError)."""
    return errors.invalid_argument("tokens outside the vocabulary", FieldViolation(field, str(exc)))


def prompt_too_long(exc: PromptTooLongError) -> errors.ServiceError:
    return errors.ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT,
        str(exc),
        reason="PROMPT_TOO_LONG",
        violations=[FieldViolation("inputs", str(exc))],
        metadata={
            "context_size": str(exc.context_size),
            "prompt_tokens": str(exc.prompt_tokens),
        },
    )


@dataclass
class ServedModel:
    """A loaded engine with its admission control."""

    engine: TextEngine
    slots: Slots
    system_prompt: str = ""

    def conversation(
        self, request: common_pb2.GenerateRequest, params: SamplingParams
    ) -> tuple[SamplingParams, list[ChatMessage]]:
        """The messages, and the parameters with a raw prompt's token ids when it has them
        (its message then holds their text)."""
        if params.logit_bias:  # an engine with no tokenizer (a remote one) leaves it upstream
            self._decoded(list(params.logit_bias), "text.logit_bias")
        if params.raw_prompt:
            prompt = raw_prompt(request)
            if isinstance(prompt, str):
                return params, [ChatMessage("user", prompt)]
            context = self.engine.info().context_size
            if context and len(prompt) >= context:  # refused before any decoding
                raise prompt_too_long(PromptTooLongError(len(prompt), context))
            text = self._decoded(prompt, "inputs")
            if text is None:
                engine = self.engine.info().engine
                raise structured.unsupported(UnsupportedError(engine, "inputs", "take token ids"))
            with_ids = dataclasses.replace(params, prompt_ids=tuple(prompt))
            return with_ids, [ChatMessage("user", text)]
        messages = chat_messages(request)
        if self.system_prompt and messages[0].role != "system":
            messages = [ChatMessage("system", self.system_prompt), *messages]
        return params, tools.conversation(messages, params.tools, self.engine.chat_template)

    def _decoded(self, ids: list[int], field: str) -> str | None:
        """The ids' text (None from an engine with no tokenizer of its own); INVALID_ARGUMENT
        naming `field` for ids the model does not have."""
        try:
            return self.engine.detokenize(ids)
        except NotImplementedError:
            return None
        except (ValueError, OverflowError) as exc:
            raise outside_vocabulary(field, exc) from None


def deltas(index: int, split: Split) -> list[common_pb2.StreamEvent]:
    """The events a piece of choice `index`'s output makes: the prompt's scores on a delta of
    their own, text (with its tokens' logprobs), then tool-call pieces."""
    events = []
    if split.prompt_logprobs:
        scored = [structured.logprob_proto(t) for t in split.prompt_logprobs]
        prompt = common_pb2.TextDelta(index=index, prompt_logprobs=scored)
        events.append(common_pb2.StreamEvent(text_delta=prompt))
    if split.text or split.thoughts or split.logprobs:
        text = common_pb2.TextDelta(
            text=split.text,
            thoughts=split.thoughts,
            index=index,
            logprobs=[structured.logprob_proto(t) for t in split.logprobs],
        )
        events.append(common_pb2.StreamEvent(text_delta=text))
    events.extend(
        common_pb2.StreamEvent(
            tool_call_delta=common_pb2.ToolCallDelta(
                index=index,
                call_index=call.call_index,
                id=call.id,
                name=call.name,
                arguments=call.arguments,
            )
        )
        for call in split.calls
    )
    return events


class TextJob(InferJob):
    """One generation in three stages, as in vLLM: input processing (messages and sampling
    parameters, validated here), the engine, and output processing (`TextOutput`). The n
    choices of a request run one after another, choice i seeded with seed + i."""

    def __init__(self, served: ServedModel, request: common_pb2.GenerateRequest) -> None:
        self.engine = served.engine
        self.model = self.engine.name
        self.slots = served.slots
        self.params = sampling_params(request, self.engine.info())
        structured.refuse_unsupported(self.engine, self.params)
        self.params, self.messages = served.conversation(request, self.params)
        # The prompt is the same for every choice: the first scores it for all.
        self.choices = [
            dataclasses.replace(
                self.params,
                seed=None if self.params.seed is None else self.params.seed + i,
                prompt_logprobs=self.params.prompt_logprobs if i == 0 else None,
            )
            for i in range(self.params.n)
        ]
        check = structured.call_check(self.params.tools)
        self.outputs = [TextOutput(self.params.stop, calls=check) for _ in self.choices]
        self._stages: dict[str, float] = {}

    async def events(self, stop: Stop) -> AsyncGenerator[common_pb2.StreamEvent, None]:
        for index, (params, output) in enumerate(zip(self.choices, self.outputs, strict=True)):
            if stop:
                return
            started = time.perf_counter()
            generation = await start_generation(self.engine, self.messages, params)
            engine_started = time.perf_counter()
            self._stages.setdefault("input_processing", engine_started - started)
            try:
                async for chunk in generation:
                    self._stages.setdefault("prefill", time.perf_counter() - engine_started)
                    for event in deltas(index, output.feed(chunk)):
                        yield event
                    if output.finished or stop:
                        break
            finally:
                # Closing the stream is what stops the engine (within one token).
                with contextlib.suppress(Exception):
                    await generation.aclose()  # type: ignore[attr-defined]
            for event in deltas(index, output.flush()):
                yield event
            problem = self._unsatisfied(output)
            if problem:
                output.finish = "error"
                details = common_pb2.Info().details
                details.update({"index": index, "reason": "CONSTRAINT_NOT_MET"})
                info = common_pb2.Info(message=problem, details=details)
                yield common_pb2.StreamEvent(info=info)

    def _unsatisfied(self, output: TextOutput) -> str:
        """Why a finished output breaks its constraint ("" when it keeps it): the safety net
        behind the engine's enforcement, for outputs that ended STOP."""
        constraint = self.params.constraint
        if constraint is None or output.finish != "stop":
            return ""
        return structured.unsatisfied("".join(output.answer), constraint)

    async def result(self) -> common_pb2.GenerateResponse:
        scored = [structured.logprob_proto(t) for t in self.outputs[0].prompt_logprobs]
        outputs = [
            common_pb2.OutputItem(
                kind=common_pb2.CONTENT_KIND_TEXT,
                text="".join(out.answer),
                thoughts="".join(out.thoughts),
                seed=params.seed or 0,
                index=index,
                tool_calls=[structured.tool_call_proto(c) for c in out.tool_calls],
                logprobs=[structured.logprob_proto(t) for t in out.logprobs],
                prompt_logprobs=scored if index == 0 else (),
                finish_reason=FINISH.get(out.finish, common_pb2.FINISH_REASON_UNSPECIFIED),
            )
            for index, (params, out) in enumerate(zip(self.choices, self.outputs, strict=True))
        ]
        first = self.outputs[0]
        completion = sum(out.completion_tokens for out in self.outputs)
        return common_pb2.GenerateResponse(
            outputs=outputs,
            usage=common_pb2.Usage(
                prompt_tokens=first.prompt_tokens,
                completion_tokens=completion,
                total_tokens=first.prompt_tokens + completion,
            ),
            finish_reason=outputs[0].finish_reason,
            stop_sequence=first.stop_sequence,
        )

    def summary(self) -> dict[str, Any]:
        return {"completion_tokens": sum(out.completion_tokens for out in self.outputs)}

    def stages(self) -> dict[str, float]:
        """The first choice's: later choices start after the first token went out."""
        return self._stages


class TextInferenceService(InferenceServicer):
    def __init__(
        self,
        models: dict[str, ServedModel],
        default_model: str,
        models_dir: Path | None,
        max_message_bytes: int,
    ) -> None:
        self.models = models
        self.default_model = default_model
        self.models_dir = models_dir
        # Answers up to the largest message the transport carries (the service's send limit).
        self.tokenizer = TokenizerCalls(max_message_bytes)

    def model(self, name: str) -> ServedModel:
        model = self.models.get(name or self.default_model)
        if model is None:
            raise errors.not_found(f"no model '{name}' on this service", "model", name, "model")
        return model

    def engine(self, name: str) -> TextEngine:
        return self.model(name).engine

    async def job(self, request: common_pb2.GenerateRequest, _: Requests) -> TextJob:
        return TextJob(self.model(request.model), request)

    def _info(self, model: ServedModel) -> common_pb2.ModelInfo:
        info = model_info_proto(model.engine.info())
        info.details.update(
            {
                "concurrency": model.slots.concurrency,
                "active": model.slots.active,
                "queued": model.slots.waiting,
            }
        )
        return info

    async def _folder(self) -> list[ModelEntry]:
        if self.models_dir is None:
            return []
        return await asyncio.to_thread(scan, self.models_dir)

    async def ListModels(  # noqa: N802
        self, request: inference_pb2.InferenceServiceListModelsRequest, context: Context
    ) -> inference_pb2.InferenceServiceListModelsResponse:
        """Loaded models first, then the models folder's other models (not loaded)."""
        listed = [self._info(m) for m in self.models.values()]
        loaded = {m.name for m in listed}
        found = [entry_info_proto(e) for e in await self._folder() if e.name not in loaded]
        return inference_pb2.InferenceServiceListModelsResponse(models=listed + found)

    async def GetModelInfo(  # noqa: N802
        self, request: inference_pb2.InferenceServiceGetModelInfoRequest, context: Context
    ) -> inference_pb2.InferenceServiceGetModelInfoResponse:
        if request.model and request.model not in self.models:
            for entry in await self._folder():
                if entry.name == request.model:
                    return inference_pb2.InferenceServiceGetModelInfoResponse(
                        model=entry_info_proto(entry)
                    )
        return inference_pb2.InferenceServiceGetModelInfoResponse(
            model=self._info(self.model(request.model))
        )

    async def Tokenize(  # noqa: N802
        self, request: inference_pb2.InferenceServiceTokenizeRequest, context: Context
    ) -> inference_pb2.InferenceServiceTokenizeResponse:
        engine = self.engine(request.model)
        try:
            return await self.tokenizer.tokenized(request, engine.tokenize, engine.count_tokens)
        except NotImplementedError as exc:
            raise unimplemented(engine, exc) from None

    async def Detokenize(  # noqa: N802
        self, request: inference_pb2.InferenceServiceDetokenizeRequest, context: Context
    ) -> inference_pb2.InferenceServiceDetokenizeResponse:
        engine = self.engine(request.model)
        try:
            return await self.tokenizer.detokenized(engine.detokenize, list(request.tokens))
        except NotImplementedError as exc:
            raise unimplemented(engine, exc) from None
        except (ValueError, OverflowError) as exc:
            raise outside_vocabulary("tokens", exc) from None


class TokenizerCalls:
    """The tokenizer RPCs' work, one call at a time on a thread of its own: megabytes of text
    take a tokenizer seconds, which on the event loop would stall every stream and fail health
    checks, and several at once in a pool would hold gigabytes."""

    # Per token at least: its id and its piece's framing, beside the piece's own bytes.
    BYTES_PER_TOKEN = 3

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tokenizer")

    def close(self) -> None:
        """Waits for the call in progress, so no tokenizer runs while its model is freed."""
        self._thread.shutdown(wait=True, cancel_futures=True)

    async def _run(self, work: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, work, *args)

    async def tokenized(
        self,
        request: inference_pb2.InferenceServiceTokenizeRequest,
        tokenize: Callable[[str, bool], list[tuple[int, str]]],
        count: Callable[[str, bool], int],
    ) -> inference_pb2.InferenceServiceTokenizeResponse:
        text, special = request.text, request.add_special_tokens
        if request.count_only:
            return inference_pb2.InferenceServiceTokenizeResponse(
                count=await self._run(count, text, special)
            )
        size = len(text.encode())
        advice = "list the tokens of a shorter text at a time, or only count them (CountTokens)"
        # A text that may not fit is counted first, so one that does not is refused before its
        # pieces are built (a token is at least a byte of the text).
        if size * (1 + self.BYTES_PER_TOKEN) > self.limit:
            tokens = await self._run(count, text, special)
            errors.check_response_size(
                size + tokens * self.BYTES_PER_TOKEN, self.limit, "text", advice
            )
        pairs = await self._run(tokenize, text, special)
        response = inference_pb2.InferenceServiceTokenizeResponse(
            tokens=[t for t, _ in pairs], pieces=[p for _, p in pairs], count=len(pairs)
        )
        errors.check_response_size(response.ByteSize(), self.limit, "text", advice)
        return response

    async def detokenized(
        self, detokenize: Callable[[list[int]], str], tokens: list[int]
    ) -> inference_pb2.InferenceServiceDetokenizeResponse:
        response = inference_pb2.InferenceServiceDetokenizeResponse(
            text=await self._run(detokenize, tokens)
        )
        advice = "detokenize fewer tokens at a time"
        errors.check_response_size(response.ByteSize(), self.limit, "tokens", advice)
        return response


def unimplemented(engine: TextEngine, exc: NotImplementedError) -> errors.ServiceError:
    return errors.ServiceError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"model '{engine.name}' has no tokenizer here: {exc}",
        reason="TOKENIZER_UNAVAILABLE",
        metadata={"model": engine.name},
    )
