"""InferenceService for audio: speech synthesis and recognition, unary and streaming.

One ``Infer`` stream serves one request, as one of three jobs over the runtime's Infer skeleton:
speech out (`speech.Speech`), a whole file in (`transcription.FileTranscription`), or raw PCM
streamed in without an audio input item (`session.LiveTranscription`). The voice and the
recogniser each admit `max_concurrency` jobs, with a bounded, timed queue behind.
"""

from __future__ import annotations

import asyncio
import dataclasses

import grpc

from genmesh.audio import codecs
from genmesh.audio.codecs import WHISPER_RATE
from genmesh.audio.inputs import audio_input, invalid, resolve_task
from genmesh.audio.session import LiveTranscription
from genmesh.audio.settings import AudioSettings
from genmesh.audio.speech import Speech
from genmesh.audio.streaming import SegmenterConfig
from genmesh.audio.stt import WhisperSTT
from genmesh.audio.transcription import FileTranscription, decode, transcribe_options
from genmesh.audio.tts import PiperTTS
from genmesh.runtime import errors
from genmesh.runtime.errors import ServiceError
from genmesh.runtime.inference import Context, InferenceServicer, InferJob, Requests
from genmesh.runtime.limiter import Slots
from genmesh.v1 import common_pb2, inference_pb2

FORMAT_NAMES = ["wav", "pcm_s16le", "flac", "ogg_opus"]
#: Bounds of a request's end_of_speech_silence, in milliseconds.
MIN_SILENCE_MS, MAX_SILENCE_MS = 100, 10_000


class AudioInferenceService(InferenceServicer):
    def __init__(self, tts: PiperTTS, stt: WhisperSTT, settings: AudioSettings) -> None:
        self.tts = tts
        self.stt = stt
        self.settings = settings
        self._tts_slots = self._slots(tts.name)
        self._stt_slots = self._slots(stt.name)
        s = settings.streaming
        self._segmenter_config = SegmenterConfig(
            threshold=s.threshold,
            neg_threshold=max(s.threshold - 0.15, 0.01),
            min_silence_ms=s.min_silence_ms,
            speech_pad_ms=s.speech_pad_ms,
            max_segment_s=s.max_segment_s,
            partial_every_s=s.partial_every_s,
        )

    def _slots(self, model: str) -> Slots:
        s = self.settings
        return Slots(model, s.max_concurrency, s.queue_size, s.queue_timeout_seconds)

    async def load(self) -> None:
        await asyncio.to_thread(self.tts.load)
        await asyncio.to_thread(self.stt.load)

    def _check_model(self, requested: str, serving: str) -> None:
        if not requested or requested == serving:
            return
        if requested in (self.tts.name, self.stt.name):
            raise invalid(f"model '{requested}' does not serve this task", "model")
        raise errors.not_found(
            f"no model '{requested}' on this service", "model", requested, "model"
        )

    async def job(self, request: common_pb2.GenerateRequest, requests: Requests) -> InferJob:
        settings = self.settings
        if resolve_task(request) == common_pb2.TASK_SPEECH:
            self._check_model(request.model, self.tts.name)
            return Speech(self.tts, self._tts_slots, request, settings.max_text_chars)
        self._check_model(request.model, self.stt.name)
        options = transcribe_options(self.stt, request)
        item = audio_input(request)
        if item is None:
            return LiveTranscription(
                self.stt,
                self._stt_slots,
                requests,
                options,
                self._segmenter(request.transcription),
                settings.max_audio_seconds,
                voice_activity=request.transcription.voice_activity,
            )
        samples = await decode(item, settings.max_audio_seconds)
        return FileTranscription(self.stt, self._stt_slots, samples, options)

    def _segmenter(self, params: common_pb2.TranscriptionParameters) -> SegmenterConfig:
        """The service's segmentation, with the request's end-of-speech silence if it has one."""
        if not params.HasField("end_of_speech_silence"):
            return self._segmenter_config
        ms = params.end_of_speech_silence.ToMilliseconds()
        if not MIN_SILENCE_MS <= ms <= MAX_SILENCE_MS:
            raise invalid(
                f"end_of_speech_silence of {ms} ms is out of range",
                "transcription.end_of_speech_silence",
                f"must be {MIN_SILENCE_MS / 1000:g} to {MAX_SILENCE_MS / 1000:g} seconds",
            )
        return dataclasses.replace(self._segmenter_config, min_silence_ms=ms)

    # Catalogue.

    @staticmethod
    def _load_details(slots: Slots) -> dict[str, int]:
        return {"concurrency": slots.concurrency, "active": slots.active, "queued": slots.waiting}

    def _tts_info(self) -> common_pb2.ModelInfo:
        info = common_pb2.ModelInfo(
            name=self.tts.name,
            engine=self.tts.engine,
            tasks=[common_pb2.TASK_SPEECH],
            voices=self.tts.voices,
            languages=[self.tts.language],
            sample_rates=[self.tts.sample_rate],
            loaded=self.tts.loaded,
            size_bytes=self.tts.size_bytes,
        )
        info.details.update(
            {
                "formats": FORMAT_NAMES,
                "output_sample_rates": f"{codecs.MIN_RATE}..{codecs.MAX_RATE}",
                "opus_sample_rates": list(codecs.OPUS_RATES),
                "phonemizer": "espeak-ng",
                "streaming": "one audio chunk per sentence",
                **self._load_details(self._tts_slots),
            }
        )
        return info

    def _stt_info(self) -> common_pb2.ModelInfo:
        info = common_pb2.ModelInfo(
            name=self.stt.name,
            engine=self.stt.engine,
            tasks=[common_pb2.TASK_TRANSCRIPTION],
            supports_audio=True,
            languages=self.stt.languages,
            sample_rates=[self.stt.sample_rate],
            loaded=self.stt.loaded,
            size_bytes=self.stt.size_bytes,
        )
        info.details.update(
            {
                "input_mime_types": sorted(codecs.DECODABLE_MIME_TYPES),
                "streaming_input": codecs.pcm_mime(WHISPER_RATE),
                "vad": "silero",
                "word_timestamps": True,
                **self._load_details(self._stt_slots),
            }
        )
        return info

    async def ListModels(  # noqa: N802
        self, request: inference_pb2.InferenceServiceListModelsRequest, context: Context
    ) -> inference_pb2.InferenceServiceListModelsResponse:
        return inference_pb2.InferenceServiceListModelsResponse(
            models=[self._tts_info(), self._stt_info()]
        )

    async def GetModelInfo(  # noqa: N802
        self, request: inference_pb2.InferenceServiceGetModelInfoRequest, context: Context
    ) -> inference_pb2.InferenceServiceGetModelInfoResponse:
        if request.model in ("", self.tts.name):
            return inference_pb2.InferenceServiceGetModelInfoResponse(model=self._tts_info())
        if request.model == self.stt.name:
            return inference_pb2.InferenceServiceGetModelInfoResponse(model=self._stt_info())
        raise errors.not_found(
            f"no model '{request.model}' on this service", "model", request.model, "model"
        )

    async def Tokenize(  # noqa: N802
        self, request: inference_pb2.InferenceServiceTokenizeRequest, context: Context
    ) -> inference_pb2.InferenceServiceTokenizeResponse:
        raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, "audio models have no tokenizer")

    async def Detokenize(  # noqa: N802
        self, request: inference_pb2.InferenceServiceDetokenizeRequest, context: Context
    ) -> inference_pb2.InferenceServiceDetokenizeResponse:
        raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, "audio models have no tokenizer")
