"""transformers + torch engine: any local Hugging Face folder, or a GGUF file (dequantised by
transformers' GGUF loader).

`model.generate` runs in a worker thread; a streamer hands each token out as it is sampled and a
stopping criterion reads the cancel event, so a client cancel ends generation within one token.
Constraints and tool calls are an llguidance matcher (`guidance`) whose logits processor masks,
before temperature, top-k and top-p, every token its grammar does not allow next.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import llguidance

from genmesh.runtime.cpus import usable_cpus
from genmesh.ttt import guidance, penalties, tools
from genmesh.ttt.engine import (
    GRAMMAR_FEATURES,
    ChatMessage,
    EngineModelInfo,
    GenerationChunk,
    SamplingParams,
    ToolUse,
)
from genmesh.ttt.threaded import ThreadedEngine, TokenRun

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Emit = Callable[[GenerationChunk], None]


class TransformersEngine(ThreadedEngine):
    """Serves a model folder or GGUF file with transformers on CPU (or `device`)."""

    engine = "transformers"
    features = GRAMMAR_FEATURES | {"penalties"}

    def __init__(
        self,
        path: Path,
        *,
        name: str | None = None,
        device: str = "cpu",
        threads: int | None = None,
        max_output_tokens: int = 0,
        chat_template: str = "",
    ) -> None:
        super().__init__(
            path,
            name=name or (path.stem if path.is_file() else path.name),
            max_output_tokens=max_output_tokens,
            chat_template=chat_template,
        )
        self._device = device
        self._threads = threads or usable_cpus()
        self._model: PreTrainedModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._guide: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        import llguidance.hf
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(self._threads)
        if self._path.is_file():
            folder, kwargs = self._path.parent, {"gguf_file": self._path.name}
        else:
            folder, kwargs = self._path, {}
        self._tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        try:
            self.chat_template = self._template_option or self._tokenizer.get_chat_template()
        except ValueError:
            raise ValueError(f"{self._path.name} has no chat template") from None
        # from_pretrained returns the model in inference (eval) mode.
        self._model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, device_map=self._device, **kwargs
        )
        self._guide = llguidance.hf.from_tokenizer(
            cast(Any, self._tokenizer),
            n_vocab=self._model.config.vocab_size,
            eos_token=sorted(self.eos_ids()),
        )

    async def unload(self) -> None:
        self._model = None
        self._tokenizer = None
        self._guide = None

    @property
    def model(self) -> PreTrainedModel:
        return self._require(self._model)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._require(self._tokenizer)

    def context_window(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 0)

    def eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return set(eos) if isinstance(eos, list) else {eos}

    def compile(self, params: SamplingParams) -> llguidance.LLMatcher | None:
        """A matcher of the request's grammar, one per generation (it follows its tokens)."""
        grammar = guidance.compile_grammar(params, self._require(self._guide))
        return None if grammar is None else grammar.matcher

    def prompt_tokens(self, messages: list[ChatMessage], use: ToolUse | None) -> list[int]:
        chat, definitions = tools.template_inputs(messages, use, self.chat_template)
        return cast(
            "list[int]",
            self.tokenizer.apply_chat_template(
                cast(Any, chat),
                tools=cast(Any, definitions),
                chat_template=self.chat_template,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            ),
        )

    def _produce(self, run: TokenRun) -> None:
        import torch
        from transformers import (
            LogitsProcessor,
            LogitsProcessorList,
            StoppingCriteria,
            StoppingCriteriaList,
        )

        prompt, params, budget, emit, stop = run.prompt, run.params, run.budget, run.emit, run.stop
        matcher: llguidance.LLMatcher | None = run.compiled

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

        class _Guided(LogitsProcessor):
            """Feeds the matcher the token sampled last, then masks what it does not allow."""

            def __init__(self, matcher: llguidance.LLMatcher) -> None:
                self.matcher = matcher

            def __call__(self, input_ids: torch.LongTensor, scores: Any) -> Any:
                if input_ids.shape[1] > len(prompt):
                    self.matcher.consume_token(int(input_ids[0, -1]))
                mask = torch.from_numpy(guidance.allowed(self.matcher, scores.shape[-1]))
                return scores.masked_fill(~mask.to(scores.device), float("-inf"))

        adjustments = penalties.Penalties(params)

        class _Adjusted(LogitsProcessor):
            """OpenAI's penalties over the tokens generated so far, and the logit bias."""

            def __call__(self, input_ids: torch.LongTensor, scores: Any) -> Any:
                row = scores[0].detach().float().cpu().numpy().copy()
                adjustments.catch_up(input_ids[0, len(prompt) :].tolist())
                penalties.apply(row, *adjustments.step())
                return torch.from_numpy(row).to(scores)[None]

        processors: list[LogitsProcessor] = [_Adjusted()] if adjustments.active else []
        if matcher is not None:
            processors.append(_Guided(matcher))
        streamer = _Streamer(self, emit, len(prompt))
        sampling = params.temperature > 0
        options: dict[str, Any] = {"do_sample": sampling}
        if sampling:
            options.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        with self._lock, torch.inference_mode():
            torch.manual_seed(params.seed if params.seed is not None else random.getrandbits(32))
            ids = torch.tensor([prompt], device=self._device)
            cast(Any, self.model).generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=budget,
                # transformers' own ban of the end-of-sequence tokens it stops at
                min_new_tokens=min(params.min_tokens, budget),
                repetition_penalty=params.repeat_penalty,
                pad_token_id=self.tokenizer.eos_token_id,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_Cancelled()]),
                logits_processor=LogitsProcessorList(processors),
                **options,
            )
        if not stop.is_set():
            streamer.finish()

    def tokenize(self, text: str, add_special_tokens: bool) -> list[tuple[int, str]]:
        encoded = self.tokenizer(
            text, add_special_tokens=add_special_tokens, return_offsets_mapping=True
        )
        # Pieces are the spans of the text each token covers (a split character stays whole).
        pieces, end = [], 0
        for start, stop in encoded["offset_mapping"]:
            pieces.append(text[max(start, end) : stop])
            end = max(end, stop)
        return list(zip(encoded["input_ids"], pieces, strict=True))

    def detokenize(self, tokens: list[int]) -> str:
        size = len(self.tokenizer)
        bad = [t for t in tokens if not 0 <= t < size]
        if bad:
            raise ValueError(f"token ids out of range [0, {size}): {bad[:5]}")
        return str(self.tokenizer.decode(tokens))

    def info(self) -> EngineModelInfo:
        context = self.context_window() if self._model is not None else 0
        files = [self._path] if self._path.is_file() else list(self._path.rglob("*"))
        return self._model_info(
            context,
            size_bytes=sum(f.stat().st_size for f in files if f.is_file()),
            details={
                "device": self._device,
                "loaded": self._model is not None,
            },
        )


class _Streamer:
    """transformers' streamer protocol: `put` gets the prompt, then one token at a time. Text is
    decoded from all generated ids so multi-token characters and word spacing come out right."""

    def __init__(self, engine: TransformersEngine, emit: Emit, prompt_tokens: int) -> None:
        self._engine = engine
        self._emit = emit
        self._prompt_tokens = prompt_tokens
        self._ids: list[int] = []
        self._sent = 0
        self._seen_prompt = False
        self._finish: Any = "length"

    def put(self, value: Any) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        for token in value.reshape(-1).tolist():
            if token in self._engine.eos_ids():
                self._finish = "stop"
                continue
            self._ids.append(token)
            self._engine.generated_tokens += 1
            self._send(final=False, tokens=1)

    def end(self) -> None:
        return None

    def finish(self) -> None:
        self._send(final=True, tokens=0)

    def _send(self, *, final: bool, tokens: int) -> None:
        text = str(self._engine.tokenizer.decode(self._ids, skip_special_tokens=True))
        piece = text[self._sent :]
        if piece.endswith("\ufffd") and not final:
            piece = ""
        self._sent += len(piece)
        first = tokens == 1 and len(self._ids) == 1
        self._emit(
            GenerationChunk(
                text=piece,
                tokens=tokens,
                finish_reason=self._finish if final else None,
                prompt_tokens=self._prompt_tokens if first or (final and not self._ids) else 0,
            )
        )
