"""The pieces under the service: sentence splitting, codecs, streaming VAD, model assembly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from faster_whisper.vad import get_vad_model

from genmesh.audio import assets, codecs
from genmesh.audio.sentences import split_sentences
from genmesh.audio.streaming import WINDOW, Segmenter, StreamingVad
from genmesh.audio.tts import PiperTTS, SpeechOptions
from genmesh.v1 import common_pb2
from tests.audio.conftest import normalise


def test_sentences_split_at_terminators_not_abbreviations() -> None:
    text = 'Dr. Smith arrived. "Is it late?" she asked!\n\nNext paragraph\n- an item'
    assert split_sentences(text) == [
        "Dr. Smith arrived.",
        '"Is it late?"',
        "she asked!",
        "Next paragraph",
        "- an item",
    ]


def test_transcript_normalisation_spells_numbers() -> None:
    assert normalise("It costs $1,250 - at 3 o'clock.") == (
        "it costs one thousand two hundred fifty at three o'clock"
    )


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    tts = PiperTTS()
    samples = np.concatenate(
        [s.samples for s in tts.stream("One short sentence. Then another one.", SpeechOptions())]
    )
    return codecs.resample(samples, tts.sample_rate, codecs.WHISPER_RATE)


def test_streaming_vad_matches_whole_recording_scores(speech: np.ndarray) -> None:
    audio = np.concatenate([speech, np.zeros(WINDOW * 3 - len(speech) % WINDOW, np.float32)])
    whole = get_vad_model()(audio.copy()).reshape(-1)
    vad = StreamingVad()
    sizes = [100, 1000, 7, WINDOW, 4096]
    parts: list[np.ndarray] = []
    start = 0
    while start < len(audio):
        size = sizes[len(parts) % len(sizes)]
        parts.append(vad.push(audio[start : start + size]))
        start += size
    streamed = np.concatenate(parts)
    assert len(streamed) == len(whole)
    np.testing.assert_allclose(streamed, whole, atol=1e-3)


def test_segmenter_cuts_at_pauses_and_keeps_bounded_audio(speech: np.ndarray) -> None:
    pause = np.zeros(codecs.WHISPER_RATE, np.float32)
    stream = np.concatenate([pause, speech, pause, speech, pause[:1000]])
    segmenter = Segmenter()
    events = []
    for start in range(0, len(stream), 1600):
        events += segmenter.push(stream[start : start + 1600])
        # Only the open segment (plus padding) is kept, not the whole stream.
        assert len(segmenter._audio) <= len(speech) + 2 * codecs.WHISPER_RATE
    events += segmenter.finish()
    finals = [e for e in events if e.final]
    assert len(finals) == 2
    assert 0.6 < finals[0].start_s < 1.0
    assert finals[1].start_s > finals[0].end_s
    assert all(len(e.audio) == e.end - e.start for e in events)
    assert any(not e.final for e in events)


def test_codecs_round_trip_and_reject_garbage() -> None:
    tone = (0.5 * np.sin(np.arange(22050) / 5)).astype(np.float32)
    for fmt in (common_pb2.AUDIO_FORMAT_WAV, common_pb2.AUDIO_FORMAT_FLAC):
        encoding = codecs.resolve_encoding(fmt, 0, 22050)
        decoded = codecs.decode(codecs.encode(tone, 22050, encoding), encoding.mime_type)
        assert len(decoded) == codecs.WHISPER_RATE
    with pytest.raises(codecs.CodecError):
        codecs.decode(b"\x00" * 1000, "audio/mpeg")
    with pytest.raises(codecs.CodecError):
        codecs.decode(b"\x00\x01\x02", "audio/pcm;rate=16000")


def test_whisper_halves_are_joined_once(tmp_path: Path) -> None:
    folder = assets.whisper_model_dir(tmp_path)
    parts = [
        assets._package_data(p) / f"model.bin.part{i}"
        for i, p in enumerate(assets.WHISPER_PARTS, 1)
    ]
    joined = folder / "model.bin"
    assert joined.stat().st_size == sum(p.stat().st_size for p in parts)
    with joined.open("rb") as f:
        assert f.read(1 << 16) == parts[0].read_bytes()[: 1 << 16]
    first = joined.stat().st_mtime_ns
    assert assets.whisper_model_dir(tmp_path) == folder
    assert joined.stat().st_mtime_ns == first
    assert {p.name for p in folder.iterdir()} == {"model.bin", *assets.WHISPER_SIDE_FILES}
