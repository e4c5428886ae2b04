"""Wires the audio service: settings, the voice and the recogniser, InferenceService, health."""

from __future__ import annotations

from genmesh.audio.service import AudioInferenceService
from genmesh.audio.settings import AudioSettings
from genmesh.audio.stt import WhisperSTT
from genmesh.audio.tts import PiperTTS
from genmesh.runtime.server import Service, serve, service_name
from genmesh.runtime.settings import load_settings
from genmesh.v1 import inference_pb2, inference_pb2_grpc


async def main() -> None:
    settings = load_settings(AudioSettings)
    servicer = AudioInferenceService(
        PiperTTS(), WhisperSTT(cpu_threads=settings.cpu_threads), settings
    )
    name = service_name(inference_pb2, "InferenceService")
    await serve(
        settings,
        [
            Service(
                name,
                lambda s: inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, s),
            )
        ],
        startup=servicer.load,
    )
