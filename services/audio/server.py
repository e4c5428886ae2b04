"""Wires the audio service: settings, the voice and the recogniser, InferenceService, health."""

from __future__ import annotations

from genmesh.audio.service import AudioInferenceService
from genmesh.audio.settings import AudioSettings
from genmesh.audio.stt import WhisperSTT
from genmesh.audio.tts import PiperTTS
from genmesh.runtime.server import inference_service, serve
from genmesh.runtime.settings import load_settings


async def main() -> None:
    settings = load_settings(AudioSettings)
    servicer = AudioInferenceService(
        PiperTTS(), WhisperSTT(cpu_threads=settings.cpu_threads), settings
    )
    await serve(
        settings,
        [inference_service(servicer)],
        startup=servicer.load,
    )
