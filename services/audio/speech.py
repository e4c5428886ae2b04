"""Speech out: one text-to-speech request as an Infer job.

A Progress event announces each sentence as it starts and its audio follows as soon as it is
synthesised, so playback can begin long before the last sentence; the final message holds the
whole file. A stop lands between sentences.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np

from genmesh.audio import codecs
from genmesh.audio.codecs import CodecError, Samples
from genmesh.audio.inputs import invalid, speech_text
from genmesh.audio.tts import PiperTTS, SpeechInputError, SpeechOptions
from genmesh.runtime.inference import InferJob, Stop
from genmesh.runtime.limiter import Slots
from genmesh.runtime.timing import duration
from genmesh.v1 import common_pb2


class Speech(InferJob):
    def __init__(
        self, tts: PiperTTS, slots: Slots, request: common_pb2.GenerateRequest, max_chars: int
    ) -> None:
        params = request.speech
        self.options = SpeechOptions(
            voice=params.voice,
            speed=params.speed if params.HasField("speed") else 1.0,
            noise=params.noise if params.HasField("noise") else None,
        )
        text = speech_text(request, max_chars)
        try:
            self.sentences = tts.validate(text, self.options)
            self.encoding = codecs.resolve_encoding(
                params.format, params.sample_rate, tts.sample_rate
            )
        except (SpeechInputError, CodecError) as exc:
            raise invalid(str(exc), exc.field or "speech") from None
        self.tts = tts
        self.model = tts.name
        self.slots = slots
        self.spoken: list[Samples] = []

    async def events(self, stop: Stop) -> AsyncGenerator[common_pb2.StreamEvent, None]:
        for index, sentence in enumerate(self.sentences):
            if stop:
                return
            yield common_pb2.StreamEvent(
                progress=common_pb2.Progress(
                    step=index + 1, total_steps=len(self.sentences), stage="synthesising"
                )
            )
            audio = await asyncio.to_thread(self.tts.synthesize, sentence, self.options)
            data = await asyncio.to_thread(self._encode, audio.samples)
            self.spoken.append(audio.samples)
            yield common_pb2.StreamEvent(
                audio_chunk=common_pb2.AudioChunk(
                    data=data,
                    mime_type=self.encoding.mime_type,
                    sample_rate=self.encoding.sample_rate,
                    sequence=index,
                    text=sentence,
                    duration=duration(len(audio.samples) / self.tts.sample_rate),
                )
            )

    def _encode(self, samples: Samples) -> bytes:
        return codecs.encode(samples, self.tts.sample_rate, self.encoding)

    async def result(self) -> common_pb2.GenerateResponse:
        whole = np.concatenate(self.spoken) if self.spoken else np.zeros(0, dtype=np.float32)
        output = common_pb2.OutputItem(
            kind=common_pb2.CONTENT_KIND_AUDIO,
            data=await asyncio.to_thread(self._encode, whole),
            mime_type=self.encoding.mime_type,
            text=" ".join(self.sentences[: len(self.spoken)]),
        )
        response = common_pb2.GenerateResponse(outputs=[output])
        if len(self.spoken) == len(self.sentences):
            response.finish_reason = common_pb2.FINISH_REASON_STOP
        return response

    def summary(self) -> dict[str, Any]:
        samples = sum(len(s) for s in self.spoken)
        return {"sentences": len(self.spoken), "seconds": samples / self.tts.sample_rate}
