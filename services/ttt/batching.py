"""Continuous batching over one llama.cpp context.

One decode thread owns the context. Every step it builds one `llama_batch` from the active
sequences (each sequence is a slot: its own KV-cache stream, positions and sampler chain) and runs
one `llama_decode` over it: a token for every sequence that is generating, then as much of the
waiting prompts as the step's token budget leaves, so a long prompt is prefilled in chunks between
the running streams' tokens instead of stalling them. New sequences join between steps; a finished
or cancelled one frees its slot at once. The llama.cpp calls go through ctypes, which releases the
GIL while the C code runs, so the asyncio side keeps serving meanwhile.

Prefix reuse: a freed slot keeps its KV cells (its stream's cache is reserved for it either way),
and a new sequence takes the free slot whose cached tokens share the longest prefix with its
prompt (a long system prompt, a personality's conditioning, the conversation so far), drops the
cells after that prefix and prefills only the rest, as llama-server's prompt cache does.

Each sequence samples with its own llama.cpp sampler chain (grammar, top-k, typical, top-p,
min-p, temperature and a seeded distribution; greedy at temperature 0), built in the order
llama-cpp-python's `Llama` uses, so a request samples as it did with the one-at-a-time engine.
Two parts of it are done here instead, with the same results, because they were most of a step's
work outside the decode: the repeat penalty, first in that order, changes only the logits of the
recent tokens, where llama.cpp's penalties sampler looks every token of the vocabulary up in a
hash map (0.2 ms a token for SmolLM2's 49k); and greedy without a grammar is an argmax over the
logits, where a chain first copies them into a candidate array.
Tokens reach the asyncio side per sequence, handed over once per step.

Admission is not decided here: the service's per-model limit (its one queue) admits at most as
many requests as there are slots, so a sequence always finds a free slot.
"""

from __future__ import annotations

import asyncio
import codecs
import itertools
import random
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from genmesh.ttt import grammar, penalties
from genmesh.ttt.engine import GenerationChunk, SamplingParams, TokenLogprob
from genmesh.ttt.threaded import TokenRun

if TYPE_CHECKING:
    from llama_cpp import Llama

# llama-cpp-python's `Llama` penalises repeats over its last 64 tokens (`last_n_tokens_size`).
PENALTY_LAST_N = 64
# A scored prompt's chunk: its logits take a row of the vocabulary's size per token, which
# llama.cpp keeps allocated for the context's life.
SCORED_CHUNK = 64
_DONE = object()


def end_of_text(llm: Llama) -> tuple[int, ...]:
    """The model's end-of-generation tokens (EOS, end of turn...), which min_tokens bans."""
    from llama_cpp import llama_cpp as lib

    vocab = llm._model.vocab
    return tuple(t for t in range(llm.n_vocab()) if lib.llama_vocab_is_eog(vocab, t))


class DecodeError(RuntimeError):
    """llama.cpp refused a decode step (no room in the KV cache, or an internal error)."""


@dataclass
class Sequence:
    """One generation in a slot, as the decode thread sees it."""

    run: TokenRun
    grammar: str | None
    loop: asyncio.AbstractEventLoop
    deliver: Callable[[object], None]
    slot: int = -1
    sampler: Any = None  # None when greedy without a grammar: the argmax needs no chain
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    decoded: list[int] = field(default_factory=list)  # tokens in the slot's KV cells
    position: int = 0
    next_token: int = -1  # sampled, to be decoded in the next step
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    # The tokens it generated last, which the repeat penalty applies to.
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=PENALTY_LAST_N))
    # OpenAI's penalties, counting the tokens it generated, its logit bias and min_tokens.
    adjustments: penalties.Penalties = field(init=False)
    end_of_text: InitVar[tuple[int, ...]] = ()
    # The prompt's scores so far, when the request asked for them.
    scored: list[TokenLogprob] = field(default_factory=list)

    def __post_init__(self, end_of_text: tuple[int, ...]) -> None:
        self.adjustments = penalties.Penalties(self.run.params, end_of_text)

    @property
    def scoring(self) -> bool:
        """Whether its prompt is scored: then every prompt token is decoded with its logits."""
        return self.run.params.prompt_logprobs is not None


Outbox = list[tuple[Sequence, object]]


class Batcher:
    """The decode thread and its slots over one context made from `llm`'s model."""

    def __init__(
        self,
        llm: Llama,
        *,
        slots: int,
        context_per_slot: int,
        batch_tokens: int,
        threads: int,
        threads_batch: int,
        reuse_prefix: bool = True,
    ) -> None:
        from llama_cpp import llama_cpp as lib

        self._lib = lib
        self._llm = llm
        self.slots = slots
        self.context_per_slot = context_per_slot
        # A prompt is prefilled in chunks of `batch_tokens` (its last one shorter), one chunk
        # per step between the generating sequences' tokens.
        self.batch_tokens = batch_tokens
        self.reuse_prefix = reuse_prefix
        capacity = max(batch_tokens, slots)
        params = lib.llama_context_default_params()
        params.n_ctx = slots * context_per_slot
        # A decode holds one prompt chunk or a token per slot; a micro-batch as large computes
        # it in one pass.
        params.n_batch = capacity
        params.n_ubatch = capacity
        params.n_seq_max = slots
        params.n_threads = threads
        params.n_threads_batch = threads_batch
        # A stream of its own per slot: a sequence attends to its own cells only, as if alone.
        params.kv_unified = False
        params.no_perf = True
        ctx = lib.llama_init_from_model(llm._model.model, params)
        if not ctx:
            raise RuntimeError("llama.cpp could not create the batching context")
        self._ctx = ctx
        self._memory = lib.llama_get_memory(ctx)
        self._vocab = llm._model.vocab
        self._n_vocab = llm.n_vocab()
        self._ends = end_of_text(llm)
        self._batch = lib.llama_batch_init(capacity, 0, 1)
        self._free = list(range(slots))
        # The tokens each slot's KV cells hold, kept after its sequence ends for the next prompt.
        self._cached: list[list[int]] = [[] for _ in range(slots)]
        self.reused_tokens = 0
        self._active: list[Sequence] = []
        self._inbox: list[Sequence] = []
        self._cancelled: set[int] = set()
        self._wake = threading.Condition()
        self._closed = False
        self._idle = threading.Event()
        self._idle.set()
        self.steps = 0
        self._thread = threading.Thread(target=self._loop, name="llama-decode", daemon=True)
        self._thread.start()

    # -- the asyncio side -------------------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self._active) + len(self._inbox)

    async def stream(self, run: TokenRun, grammar: str | None) -> AsyncIterator[GenerationChunk]:
        """Runs `run` in a slot and yields its chunks; closing the iterator cancels it (its slot
        is freed before the next step)."""
        queue: asyncio.Queue[object] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        sequence = Sequence(
            run, grammar, loop, queue.put_nowait, pending=list(run.prompt), end_of_text=self._ends
        )
        with self._wake:
            if self._closed:
                raise RuntimeError("the model is unloading")
            self._inbox.append(sequence)
            self._idle.clear()
            self._wake.notify()
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, GenerationChunk)
                yield item
        finally:
            if not run.stop.is_set():
                run.stop.set()
                with self._wake:
                    self._wake.notify()

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self._idle.wait(timeout)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        self._lib.llama_batch_free(self._batch)
        self._lib.llama_free(self._ctx)

    # -- the decode thread ------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._inbox and not self._active:
                    self._idle.set()
                    self._wake.wait()
                if self._closed:
                    ending = self._inbox + self._active
                    self._inbox = []
                    for sequence in list(self._active):
                        self._release(sequence)
                    _hand_over(
                        [(s, RuntimeError("the model is unloading")) for s in ending]
                        + [(s, _DONE) for s in ending]
                    )
                    self._idle.set()
                    return
                starting = []
                while self._inbox and self._free:
                    starting.append(self._inbox.pop(0))
            failed: Outbox = []
            for sequence in starting:
                try:
                    self._start(sequence)
                except Exception as exc:  # its sampler would not build: only it fails
                    failed += [(sequence, exc), (sequence, _DONE)]
            _hand_over(failed)
            for sequence in [s for s in self._active if s.run.stop.is_set()]:
                self._release(sequence)
            if not self._active:
                continue
            outbox: Outbox = []
            try:
                self._step(outbox)
            except Exception as exc:  # every sequence in the failed step gets the error
                for sequence in list(self._active):
                    outbox += [(sequence, exc), (sequence, _DONE)]
                    sequence.decoded = []  # what the failed step left in the cells is unknown
                    self._release(sequence)
            _hand_over(outbox)

    def _start(self, sequence: Sequence) -> None:
        sequence.sampler = self._sampler(sequence.run.params, sequence.grammar)
        if sequence.scoring:  # it reuses nothing: take the slot whose cache is worth least
            self._free.sort(key=lambda free: len(self._cached[free]))
        slot, reused = max(
            (
                (slot, self._shared_prefix(slot, sequence.pending, sequence.scoring))
                for slot in self._free
            ),
            key=lambda candidate: candidate[1],  # the first of the free slots on a tie
        )
        self._free.remove(slot)
        if not self._lib.llama_memory_seq_rm(self._memory, slot, reused, -1):
            reused = 0  # the model's memory cannot cut a sequence short: start afresh
            self._lib.llama_memory_seq_rm(self._memory, slot, -1, -1)
        sequence.slot, sequence.position = slot, reused
        sequence.decoded = sequence.pending[:reused]
        del sequence.pending[:reused]
        if sequence.scoring:  # nothing before the first token predicts it
            first = sequence.pending[0]
            sequence.scored = [TokenLogprob(first, bytes(self._llm.detokenize([first])), 0.0)]
        self.reused_tokens += reused
        self._active.append(sequence)

    def _shared_prefix(self, slot: int, prompt: list[int], scoring: bool) -> int:
        """How many of the prompt's first tokens the slot's cells hold, all but the last at
        most: the last is decoded again for its logits (and a scored prompt all of them)."""
        if not self.reuse_prefix or scoring:
            return 0
        shared = 0
        for cached, token in zip(self._cached[slot], prompt[:-1], strict=False):
            if cached != token:
                break
            shared += 1
        return shared

    def _release(self, sequence: Sequence) -> None:
        """Frees the sequence's slot at once; its KV cells stay as the slot's cache."""
        self._active.remove(sequence)
        self._cached[sequence.slot] = sequence.decoded
        if sequence.sampler is not None:
            self._lib.llama_sampler_free(sequence.sampler)
            sequence.sampler = None
        self._free.append(sequence.slot)
        self._free.sort()

    def _sampler(self, params: SamplingParams, grammar: str | None) -> Any:
        if params.temperature == 0 and grammar is None:
            return None
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        add = lib.llama_sampler_chain_add
        if grammar is not None:
            add(chain, lib.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root"))
        if params.temperature == 0:
            add(chain, lib.llama_sampler_init_greedy())
        else:
            seed = random.getrandbits(32) if params.seed is None else params.seed
            add(chain, lib.llama_sampler_init_top_k(params.top_k))
            add(chain, lib.llama_sampler_init_typical(1.0, 1))
            add(chain, lib.llama_sampler_init_top_p(params.top_p, 1))
            add(chain, lib.llama_sampler_init_min_p(float(params.extra.get("min_p", 0.05)), 1))
            add(chain, lib.llama_sampler_init_temp(params.temperature))
            add(chain, lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _step(self, outbox: Outbox) -> None:
        """One step: a decode of the next token of every generating sequence, then the next
        chunk of the longest-waiting prompt. The chunk is decoded on its own: with a KV stream
        per slot llama.cpp would split it from the tokens anyway, and alone its boundaries (and
        so its numerics and samples) are those of the request running alone."""
        generating = [s for s in self._active if not s.pending]
        if generating:
            self._decode([(s, [s.next_token]) for s in generating], outbox)
        prefilling = next((s for s in self._active if s.pending), None)
        if prefilling is not None:
            size = min(self.batch_tokens, SCORED_CHUNK) if prefilling.scoring else self.batch_tokens
            chunk = prefilling.pending[:size]
            del prefilling.pending[: len(chunk)]
            self._decode([(prefilling, chunk)], outbox)

    def _decode(self, parts: list[tuple[Sequence, list[int]]], outbox: Outbox) -> None:
        """One `llama_decode` of each sequence's tokens; a sequence whose tokens end its prompt
        or continue its generation samples its next token from the last one's logits."""
        lib, batch = self._lib, self._batch
        n = 0
        outputs: list[tuple[Sequence, int]] = []
        # (sequence, output, the prompt token whose logprob that output's logits give)
        scores: list[tuple[Sequence, int, int]] = []
        for sequence, tokens in parts:
            scoring = sequence.scoring and len(sequence.decoded) < len(sequence.run.prompt)
            sequence.decoded += tokens
            following = tokens[1:] + sequence.pending[:1]
            for index, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = sequence.position
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = sequence.slot
                batch.logits[n] = scoring
                if scoring and index < len(following):
                    scores.append((sequence, n, following[index]))
                sequence.position += 1
                n += 1
            if not sequence.pending:
                batch.logits[n - 1] = True
                outputs.append((sequence, n - 1))
        batch.n_tokens = n
        status = lib.llama_decode(self._ctx, batch)
        self.steps += 1
        if status != 0:
            raise DecodeError(f"llama_decode returned {status}")
        for sequence, scored in itertools.groupby(scores, key=lambda score: score[0]):
            top = sequence.run.params.prompt_logprobs or 0
            sequence.scored += self._logprobs([(index, token) for _, index, token in scored], top)
        for sequence, index in outputs:
            if sequence.scored:
                sequence.run.prompt_logprobs = tuple(sequence.scored)
                sequence.scored = []
            self._sample(sequence, index, outbox)

    def _sample(self, sequence: Sequence, index: int, outbox: Outbox) -> None:
        lib, run = self._lib, sequence.run
        sampled: int | None
        with self._penalised(sequence, index) as logits:
            if sequence.sampler is None:  # the first of the likeliest, as llama.cpp's greedy
                sampled = int(np.argmax(logits))
            elif sequence.grammar is None:
                sampled = int(lib.llama_sampler_sample(sequence.sampler, self._ctx, index))
            else:  # a grammar at a dead end would make llama.cpp abort the process on accept
                sampled = grammar.sample_or_dead_end(
                    lib, sequence.sampler, self._ctx, index, self._n_vocab
                )
        token = -1 if sampled is None else sampled
        finish: Literal["stop", "length", "error"] | None = None
        chunks: list[object] = []
        run.emit = chunks.append
        top = run.params.top_logprobs
        logprob = None
        if sampled is not None and top is not None:
            logprob = self._logprob(index, token, top)
        if sampled is None:
            finish = "error"
        elif lib.llama_vocab_is_eog(self._vocab, token):
            # The end's logprob too (its text empty), as vLLM's: one entry per token sampled.
            finish = "stop"
        else:
            piece = bytes(self._llm.detokenize([token]))
            run.token(sequence.decoder.decode(piece), logprob)
            sequence.next_token = token
            sequence.recent.append(token)
            sequence.adjustments.add(token)
            if run.produced >= run.budget:
                finish = "length"
        if finish is not None:
            ending = logprob if finish == "stop" else None
            run.finish(finish, sequence.decoder.decode(b"", final=True), ending)
            chunks.append(_DONE)
            self._release(sequence)
        outbox.extend((sequence, chunk) for chunk in chunks)

    def _logits(self, index: int) -> np.ndarray:
        """Output `index`'s logits of the last decode: a view of llama.cpp's own buffer."""
        return np.ctypeslib.as_array(
            self._lib.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,)
        )

    @contextmanager
    def _penalised(self, sequence: Sequence, index: int) -> Iterator[np.ndarray]:
        """Output `index`'s logits (llama.cpp's own buffer, which the sampler chain reads) with
        OpenAI's penalties and logit bias, then the repeat penalty applied as llama.cpp's
        penalties sampler would (a repeated token's logit divided by the penalty, or multiplied
        when negative, in float32); restored after, so logprobs stay the model's."""
        logits = self._logits(index)
        penalty = np.float32(sequence.run.params.repeat_penalty)
        repeated = penalties.NO_IDS
        if sequence.recent and penalty != 1:
            repeated = np.fromiter(set(sequence.recent), dtype=np.intp)
        adjusted, deltas = sequence.adjustments.step()
        tokens = np.concatenate([adjusted, repeated]) if adjusted.size else repeated
        if not tokens.size:
            yield logits
            return
        kept = logits[tokens]
        try:
            # llama-cpp-python's chain order, which the one-at-a-time engine samples with.
            penalties.apply(logits, adjusted, deltas)
            if repeated.size:
                values = logits[repeated]
                logits[repeated] = np.where(values <= 0, values * penalty, values / penalty)
            yield logits
        finally:
            logits[tokens] = kept

    def _logprob(self, index: int, token: int, top: int) -> TokenLogprob:
        """The sampled token's log probability under the model and the `top` likeliest tokens,
        from the logits of the step that sampled it."""
        return self._logprobs([(index, token)], top)[0]

    def _logprobs(self, outputs: list[tuple[int, int]], top: int) -> list[TokenLogprob]:
        """Each (output, token)'s log probability and the `top` likeliest tokens there: a
        softmax over all the rows at once, since a scored prompt has a row per token and the
        other sequences wait for this step."""
        rows = np.stack([self._logits(index) for index, _ in outputs])
        peak = rows.max(axis=1, keepdims=True)
        logprobs = rows - (peak + np.log(np.exp(rows - peak).sum(axis=1, keepdims=True)))
        piece = self._llm.detokenize
        entries = []
        for row, (_, token) in zip(logprobs, outputs, strict=True):
            best = np.argpartition(-row, top)[:top] if top else np.array([], dtype=int)
            best = best[np.argsort(-row[best])]
            alternatives = tuple(
                TokenLogprob(int(t), bytes(piece([int(t)])), float(row[t])) for t in best
            )
            logprob = float(row[token])
            entries.append(TokenLogprob(token, bytes(piece([token])), logprob, alternatives))
        return entries


def _hand_over(outbox: Outbox) -> None:
    """Gives each sequence its items on its own event loop, one wake-up per loop per step."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Sequence, object]]] = {}
    for sequence, item in outbox:
        by_loop.setdefault(sequence.loop, []).append((sequence, item))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, items)
        except RuntimeError:  # the loop is closed: nobody listens any more
            for sequence, _ in items:
                sequence.run.stop.set()


def _deliver(items: list[tuple[Sequence, object]]) -> None:
    for sequence, item in items:
        sequence.deliver(item)
