"""onnxruntime-genai engine: a model folder made by its model builder (a `genai_config.json`
next to the ONNX graph). CPU by default; `provider="cuda"` where onnxruntime-genai-cuda and a GPU
exist.

The token loop is ours (`generate_next_token` one step at a time in a worker thread), so a client
cancel stops generation within one token. Constraints and tool calls are onnxruntime-genai's
guidance (llguidance inside it) with the grammar `guidance` writes, checked first by llguidance's
Python binding on the model's tokenizer.json.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import llguidance

from genmesh.ttt import guidance, tools
from genmesh.ttt.engine import (
    GRAMMAR_FEATURES,
    ChatMessage,
    EngineModelInfo,
    SamplingParams,
    ToolUse,
)
from genmesh.ttt.threaded import ThreadedEngine, TokenRun

if TYPE_CHECKING:
    import onnxruntime_genai as og


class OnnxGenAIEngine(ThreadedEngine):
    """Serves an onnxruntime-genai model folder."""

    engine = "onnxruntime-genai"
    features = GRAMMAR_FEATURES

    def __init__(
        self,
        path: Path,
        *,
        name: str | None = None,
        provider: str = "cpu",
        max_output_tokens: int = 0,
        chat_template: str = "",
    ) -> None:
        super().__init__(
            path,
            name=name or path.name,
            max_output_tokens=max_output_tokens,
            chat_template=chat_template,
        )
        self._provider = provider
        config = json.loads((path / "genai_config.json").read_text())
        self._context = int(config["model"].get("context_length", 0))
        eos = config["model"].get("eos_token_id", [])
        self._eos = set(eos) if isinstance(eos, list) else {eos}
        self._vocab = int(config["model"]["vocab_size"])
        self._model: og.Model | None = None
        self._tokenizer: og.Tokenizer | None = None
        self._guide: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        import onnxruntime_genai as og

        config = og.Config(str(self._path))
        config.clear_providers()
        if self._provider != "cpu":
            config.append_provider(self._provider)
        self._model = og.Model(config)
        self.chat_template = self._template_option or folder_template(self._path)
        self._tokenizer = og.Tokenizer(self._model)
        self._guide = llguidance.LLTokenizer(
            str(self._path / "tokenizer.json"), n_vocab=self._vocab, eos_token=sorted(self._eos)
        )

    async def unload(self) -> None:
        self._model = None
        self._tokenizer = None
        self._guide = None

    def _loaded(self) -> tuple[og.Model, og.Tokenizer]:
        return self._require(self._model), self._require(self._tokenizer)

    def prompt_tokens(self, messages: list[ChatMessage], use: ToolUse | None) -> list[int]:
        _, tokenizer = self._loaded()
        chat, definitions = tools.template_inputs(messages, use, self.chat_template)
        text = tokenizer.apply_chat_template(
            json.dumps(chat),
            # The template this engine judged (`chat_template`), so the two never differ.
            template_str=self.chat_template or None,
            tools=None if definitions is None else json.dumps(definitions),
            add_generation_prompt=True,
        )
        return [int(t) for t in tokenizer.encode(text)]

    def context_window(self) -> int:
        return self._context

    def compile(self, params: SamplingParams) -> str | None:
        """The Lark text of the request's grammar, for `set_guidance`."""
        grammar = guidance.compile_grammar(params, self._require(self._guide))
        return None if grammar is None else grammar.lark

    def _produce(self, run: TokenRun) -> None:
        import onnxruntime_genai as og

        model, tokenizer = self._loaded()
        params = run.params
        search = og.GeneratorParams(model)
        options: dict[str, Any] = {
            "max_length": len(run.prompt) + run.budget,
            # onnxruntime-genai's own ban of the end of text, counted with the prompt
            "min_length": len(run.prompt) + min(params.min_tokens, run.budget),
            "do_sample": params.temperature > 0,
            "repetition_penalty": params.repeat_penalty,
            "random_seed": params.seed if params.seed is not None else random.getrandbits(31),
        }
        if params.temperature > 0:
            options.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        search.set_search_options(**options)
        if run.compiled is not None:
            search.set_guidance("lark_grammar", run.compiled)
        decoder = tokenizer.create_stream()
        finish: Literal["stop", "length"] = "length"
        with self._lock:
            generator = og.Generator(model, search)
            generator.append_tokens(run.prompt)
            while run.produced < run.budget:
                if run.stop.is_set():
                    return
                if generator.is_done():  # after an end-of-sequence token
                    finish = "stop"
                    break
                generator.generate_next_token()
                token = int(generator.get_next_tokens()[0])
                if token in self._eos:
                    finish = "stop"
                    break
                run.token(decoder.decode(token))
        run.finish(finish)

    def tokenize(self, text: str, add_special_tokens: bool) -> list[tuple[int, str]]:
        _, tokenizer = self._loaded()
        # The streaming decoder hands a multi-token character to the token that completes it.
        stream = tokenizer.create_stream()
        return [(int(t), stream.decode(int(t))) for t in tokenizer.encode(text)]

    def detokenize(self, tokens: list[int]) -> str:
        _, tokenizer = self._loaded()
        if any(t < 0 for t in tokens):
            raise ValueError("token ids must not be negative")
        text: str = tokenizer.decode(tokens)
        return text

    def info(self) -> EngineModelInfo:
        return self._model_info(
            self._context,
            size_bytes=sum(p.stat().st_size for p in self._path.rglob("*") if p.is_file()),
            details={
                "provider": self._provider,
                "loaded": self._model is not None,
            },
        )


def folder_template(path: Path) -> str:
    """The chat template of a model folder, where Hugging Face keeps it (`chat_template.jinja`,
    else tokenizer_config.json's "chat_template"); "" leaves onnxruntime-genai to its own."""
    file = path / "chat_template.jinja"
    if file.is_file():
        return file.read_text()
    config = path / "tokenizer_config.json"
    template = json.loads(config.read_text()).get("chat_template") if config.is_file() else None
    return template if isinstance(template, str) else ""
