"""Audio service on CPU: speed of synthesis and recognition, and streaming latencies.

Starts an audio service (or uses `--address` with `--api-key`) and measures, through its
InferenceService as the router sees it:
- TTS real-time factor (synthesis time / audio length; below 1 is faster than real time) and
  time to the first audio chunk against the time to the whole result, for a paragraph;
- STT real-time factor of a whole-file transcription of that paragraph;
- streaming STT: speech sent at real-time pace in 100 ms chunks with pauses between sentences;
  for each sentence, the time from its last speech sample being sent to its final transcript.
  The segment only ends after the VAD's minimum silence (500 ms by default), which is part of
  the figure, so it is reported as well;
- side by side, in alternating rounds: the paragraph spoken and its speech transcribed through
  the mesh (a router in front of the service, `GenerateStream` on a speech and a transcription
  binding) and by the same Piper voice and faster-whisper model called in this process with the
  service's settings. The ratios are the in-process time over the mesh's (target: >= 0.9).
"""

from __future__ import annotations

import contextlib
import io
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faster_whisper import WhisperModel
from piper import PiperVoice

from bench.common import command_line, emit, service_options
from genmesh.audio.assets import piper_voice, whisper_model_dir
from genmesh.audio.settings import StreamingSettings
from genmesh.audio.stt import FILE_VAD
from genmesh.v1 import (
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
)
from tests.support import API_KEY, INTERNAL_KEY, ServiceProcess, router_config

PARAGRAPH = [
    "The museum opens at ten in the morning and closes at six in the evening.",
    "Visitors can join a guided tour that starts every hour from the main hall.",
    "Photography is allowed in most rooms, but please do not use a flash.",
    "The cafe on the top floor serves lunch, coffee and a selection of cakes.",
]
RATE = 16000
CHUNK = RATE // 10
PAUSE_S = 1.5
RATIO_TARGET = 0.9


class Audio:
    """Blocking calls to one audio service."""

    def __init__(self, address: str, key: str) -> None:
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.metadata = (("x-api-key", key),)

    def infer(self, request: common_pb2.GenerateRequest) -> Iterator[common_pb2.StreamEvent]:
        opening = iter([inference_pb2.InferRequest(request=request)])
        for response in self.stub.Infer(opening, metadata=self.metadata):
            yield response.event

    def speak(self, text: str, **params: Any) -> tuple[dict[str, float], bytes]:
        request = common_pb2.GenerateRequest(
            task=common_pb2.TASK_SPEECH,
            inputs=[common_pb2.InputItem(text=text)],
            speech=common_pb2.SpeechParameters(**params),
        )
        start = time.perf_counter()
        first = 0.0
        for event in self.infer(request):
            if event.HasField("audio_chunk") and not first:
                first = time.perf_counter() - start
            if event.HasField("final"):
                total = time.perf_counter() - start
                return {"first_chunk_s": first, "total_s": total}, event.final.outputs[0].data
        raise RuntimeError("no final result")

    def transcribe(self, wav: bytes) -> tuple[float, str]:
        request = common_pb2.GenerateRequest(
            task=common_pb2.TASK_TRANSCRIPTION,
            inputs=[
                common_pb2.InputItem(
                    kind=common_pb2.CONTENT_KIND_AUDIO, data=wav, mime_type="audio/wav"
                )
            ],
        )
        start = time.perf_counter()
        for event in self.infer(request):
            if event.HasField("final"):
                return time.perf_counter() - start, event.final.outputs[0].text
        raise RuntimeError("no final result")

    def stream(self, sentences: list[np.ndarray]) -> list[float]:
        """Real-time paced streaming; seconds from each sentence's end to its final transcript."""
        speech_ends: list[float] = []
        pause = np.zeros(int(PAUSE_S * RATE), dtype="<i2")
        done = threading.Event()

        def requests() -> Iterator[inference_pb2.InferRequest]:
            request = common_pb2.GenerateRequest(task=common_pb2.TASK_TRANSCRIPTION)
            yield inference_pb2.InferRequest(request=request)
            clock = time.perf_counter()
            for samples in sentences:
                for part, is_speech in ((samples, True), (pause, False)):
                    for start in range(0, len(part), CHUNK):
                        piece = part[start : start + CHUNK]
                        clock += len(piece) / RATE
                        time.sleep(max(clock - time.perf_counter(), 0))
                        chunk = common_pb2.AudioChunk(
                            data=piece.tobytes(), mime_type="audio/pcm", sample_rate=RATE
                        )
                        yield inference_pb2.InferRequest(audio=chunk)
                    if is_speech:
                        speech_ends.append(time.perf_counter())
            end = common_pb2.Control(action=common_pb2.Control.ACTION_END_OF_INPUT)
            yield inference_pb2.InferRequest(control=end)
            done.wait()

        finals: list[float] = []
        try:
            for response in self.stub.Infer(requests(), metadata=self.metadata):
                event = response.event
                if event.HasField("transcript") and event.transcript.is_final:
                    finals.append(time.perf_counter())
        finally:
            done.set()
        return [f - e for e, f in zip(speech_ends, finals, strict=False)]


class Routed:
    """The same work through the mesh: a router in front of the service."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        self.stub = generation_pb2_grpc.GenerationServiceStub(self.channel)
        self.metadata = (("x-api-key", API_KEY),)

    def _final(self, request: common_pb2.GenerateRequest) -> common_pb2.GenerateResponse:
        opened = generation_pb2.GenerateStreamRequest(request=request)
        for response in self.stub.GenerateStream(opened, metadata=self.metadata):
            if response.event.HasField("final"):
                return response.event.final
        raise RuntimeError("no final result")

    def speak(self, text: str) -> float:
        request = common_pb2.GenerateRequest(
            task=common_pb2.TASK_SPEECH,
            binding="piper",
            inputs=[common_pb2.InputItem(text=text)],
            speech=common_pb2.SpeechParameters(format=common_pb2.AUDIO_FORMAT_PCM_S16LE),
        )
        start = time.perf_counter()
        self._final(request)
        return time.perf_counter() - start

    def transcribe(self, data: bytes) -> float:
        audio = common_pb2.InputItem(
            kind=common_pb2.CONTENT_KIND_AUDIO, data=data, mime_type="audio/wav"
        )
        request = common_pb2.GenerateRequest(
            task=common_pb2.TASK_TRANSCRIPTION, binding="whisper", inputs=[audio]
        )
        start = time.perf_counter()
        self._final(request)
        return time.perf_counter() - start


class InProcess:
    """The libraries the service runs, called here with its settings: the Piper voice, and
    Whisper base int8 with the service's file VAD and beam size."""

    def __init__(self) -> None:
        files = piper_voice()
        self.voice = PiperVoice.load(files.model, files.config)
        self.whisper = WhisperModel(
            str(whisper_model_dir()), device="cpu", compute_type="int8", local_files_only=True
        )

    def speak(self, text: str) -> float:
        start = time.perf_counter()
        for _ in self.voice.synthesize(text):
            pass
        return time.perf_counter() - start

    def transcribe(self, samples: np.ndarray) -> float:
        start = time.perf_counter()
        segments, _ = self.whisper.transcribe(
            samples.astype(np.float32) / 32768.0,
            beam_size=5,
            vad_filter=True,
            vad_parameters=FILE_VAD,
            condition_on_previous_text=False,
        )
        for _ in segments:
            pass
        return time.perf_counter() - start


def side_by_side(address: str, key: str, samples: np.ndarray, rounds: int) -> dict[str, Any]:
    """Speech out and in, through the mesh (a router calling the service at `address` with
    `key`) and in process, in alternating rounds."""
    text = " ".join(PARAGRAPH)
    bindings = [
        {"name": "piper", "tasks": ["speech"], "addresses": [address], "engine": "piper"},
        {"name": "whisper", "tasks": ["transcription"], "addresses": [address]},
    ]
    router = ServiceProcess(
        "router", router_config(bindings), extra_env={"GENMESH_INTERNAL_KEY": key}
    )
    try:
        routed, local = Routed(router.address), InProcess()
        data = wav(samples)
        sides: dict[str, Any] = {"mesh": (routed, data), "in_process": (local, samples)}
        for side, heard in sides.values():  # warm-up
            side.speak("Warm up.")
            side.transcribe(heard)
        times: dict[str, dict[str, list[float]]] = {k: {"tts": [], "stt": []} for k in sides}
        for round_ in range(rounds):
            order = list(sides) if round_ % 2 == 0 else list(sides)[::-1]
            for name in order:
                side, heard = sides[name]
                times[name]["tts"].append(side.speak(text))
                times[name]["stt"].append(side.transcribe(heard))
    finally:
        router.terminate()
    medians = {
        name: {job: statistics.median(t) * 1000 for job, t in jobs.items()}
        for name, jobs in times.items()
    }
    return {
        "mesh_ms": medians["mesh"],
        "in_process_ms": medians["in_process"],
        "ratios": {
            f"{job}_in_process_over_mesh": medians["in_process"][job] / medians["mesh"][job]
            for job in ("tts", "stt")
        },
        "targets": {f"{job}_in_process_over_mesh": f">= {RATIO_TARGET}" for job in ("tts", "stt")},
        "rounds": rounds,
    }


def pcm16(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2")


def wav(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def measure(audio: Audio, address: str, key: str, runs: int) -> dict[str, Any]:
    text = " ".join(PARAGRAPH)
    audio.speak("Warm up.")
    tts: list[dict[str, float]] = []
    pcm = common_pb2.AUDIO_FORMAT_PCM_S16LE
    samples = np.zeros(0, dtype="<i2")
    for _ in range(runs):
        timing, data = audio.speak(text, format=pcm, sample_rate=RATE)
        samples = pcm16(data)
        timing["audio_s"] = len(samples) / RATE
        tts.append(timing)
    stt = [audio.transcribe(wav(samples))[0] for _ in range(runs)]
    audio_s = tts[0]["audio_s"]
    sentences = [pcm16(audio.speak(s, format=pcm, sample_rate=RATE)[1]) for s in PARAGRAPH]
    latencies = audio.stream(sentences)
    return {
        "audio_seconds": round(audio_s, 2),
        "tts_rtf": round(statistics.median(t["total_s"] / t["audio_s"] for t in tts), 3),
        "tts_first_chunk_ms": round(statistics.median(t["first_chunk_s"] for t in tts) * 1000),
        "tts_total_ms": round(statistics.median(t["total_s"] for t in tts) * 1000),
        "stt_rtf": round(statistics.median(stt) / audio_s, 3),
        "stt_total_ms": round(statistics.median(stt) * 1000),
        "stream_final_latency_ms": [round(x * 1000) for x in latencies],
        "stream_final_latency_p50_ms": round(statistics.median(latencies) * 1000),
        "vad_min_silence_ms": StreamingSettings().min_silence_ms,
        "runs": runs,
        "side_by_side": side_by_side(address, key, samples, runs),
    }


def report(results: dict[str, Any]) -> None:
    print(f"paragraph of {len(PARAGRAPH)} sentences, {results['audio_seconds']} s of speech")
    print(f"TTS  real-time factor      {results['tts_rtf']:>8}")
    print(f"TTS  first audio chunk     {results['tts_first_chunk_ms']:>8} ms")
    print(f"TTS  whole paragraph       {results['tts_total_ms']:>8} ms")
    print(f"STT  real-time factor      {results['stt_rtf']:>8}")
    print(f"STT  whole paragraph       {results['stt_total_ms']:>8} ms")
    print(
        f"streaming STT, end of speech to final transcript: "
        f"p50 {results['stream_final_latency_p50_ms']} ms "
        f"(each: {results['stream_final_latency_ms']}; includes "
        f"{results['vad_min_silence_ms']} ms of silence the VAD waits for)"
    )
    compared = results["side_by_side"]
    print(f"side by side ({compared['rounds']} alternating rounds, medians):")
    for job, label in (("tts", "speak the paragraph"), ("stt", "transcribe it")):
        mesh, local = compared["mesh_ms"][job], compared["in_process_ms"][job]
        ratio = compared["ratios"][f"{job}_in_process_over_mesh"]
        print(
            f"  {label:<20} mesh {mesh:>7.0f} ms  in process {local:>7.0f} ms  "
            f"in process / mesh {ratio:.3f} (target >= {RATIO_TARGET})"
        )


def main() -> None:
    parser = command_line(__doc__)
    service_options(parser, "audio service", INTERNAL_KEY, runs=3)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        address = args.address
        if not address:
            service = ServiceProcess("audio", {})
            stack.callback(service.terminate)
            address = service.address
        results = measure(Audio(address, args.api_key), address, args.api_key, args.runs)
    emit(results, args.json, report)


if __name__ == "__main__":
    main()
