"""OpenAI's presence and frequency penalties and logit bias, and vLLM's min_tokens (the end of
text banned until then), applied to a row of logits.

One implementation for the engines that sample in Python or let Python adjust the logits they
sample from (llama.cpp, batched or not, and transformers), so each means the same everywhere:
the penalties count the tokens generated so far, not the prompt's, as OpenAI and vLLM count them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from genmesh.ttt.engine import SamplingParams

NO_IDS = np.empty(0, dtype=np.intp)
_NO_DELTAS = np.empty(0, dtype=np.float32)


class Penalties:
    """One generation's adjustments. Counts are kept as tokens come, so a step costs the
    distinct tokens so far, not the whole output again."""

    def __init__(self, params: SamplingParams, end_of_text: Iterable[int] = ()) -> None:
        self.presence = np.float32(params.presence_penalty)
        self.frequency = np.float32(params.frequency_penalty)
        self.counting = bool(params.presence_penalty or params.frequency_penalty)
        bias = params.logit_bias
        self._bias_ids = np.fromiter(bias.keys(), dtype=np.intp, count=len(bias))
        self._bias = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
        self.min_tokens = params.min_tokens
        self._ends = np.fromiter(end_of_text, dtype=np.intp)
        self._banned = np.full(len(self._ends), -np.inf, dtype=np.float32)
        self.active = self.counting or bool(bias) or bool(self.min_tokens and len(self._ends))
        self._counts: Counter[int] = Counter()
        self._seen = 0

    def add(self, token: int) -> None:
        self._seen += 1
        if self.counting:
            self._counts[token] += 1

    def catch_up(self, generated: Sequence[int] | np.ndarray) -> None:
        """Counts what `generated` (the whole output so far) holds beyond what was counted."""
        new: Iterable[int] = generated[self._seen :]
        for token in new:
            self.add(int(token))

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        """The ids this step adjusts and what is added to each (an id may come twice)."""
        if not self.active:
            return NO_IDS, _NO_DELTAS
        ids, deltas = [self._bias_ids], [self._bias]
        if self._counts:
            counts = self._counts
            ids.append(np.fromiter(counts.keys(), dtype=np.intp, count=len(counts)))
            times = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
            deltas.append(-(self.presence + self.frequency * times))
        if self._seen < self.min_tokens and len(self._ends):
            ids.append(self._ends)
            deltas.append(self._banned)
        if len(ids) == 1:
            return self._bias_ids, self._bias
        return np.concatenate(ids), np.concatenate(deltas)


def apply(logits: np.ndarray, ids: np.ndarray, deltas: np.ndarray) -> None:
    """Adds `deltas` at `ids`, in place; ids past the row (a tokenizer larger than the output
    layer) name no token the model can produce and are passed over."""
    inside = ids < len(logits)
    np.add.at(logits, ids[inside], deltas[inside])
