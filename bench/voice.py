"""Voice loop latency: from the end of the user's speech to the first audio of the reply.

Starts a ttt service with the embedded SmolLM2 (llama.cpp), an audio service (Piper, Whisper)
and a router in front (or uses `--address` with `--api-key`), and talks to the router's
`Converse` as a microphone would: speech spoken by Piper, sent at the pace it plays in 100 ms
chunks, then silence until the reply is heard. Per question it measures:
- with voice activity detection ending the turn: the time from the end of speech (where the VAD
  put it) to the first reply audio, and its parts: the silence the VAD waits for
  (end_of_speech_silence, 0.5 s by default), recognition (the VAD's end-of-speech event to the
  final transcript), the first token, the rest of the first sentence, and its synthesis;
- push-to-talk (Control END_OF_INPUT when the speech ends): the same without the silence;
- whether the first audio left before the reply's text was finished;
- barge-in: while a long reply plays, a question is spoken over it; the time from the start of
  that speech (where the VAD put it) to the cut reply's final event.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import command_line, emit, service_options
from genmesh.cli.talk import Pcm, VoiceCall, voice_config
from genmesh.client import Client
from genmesh.v1 import common_pb2
from tests.support import API_KEY, ServiceProcess, router_config
from tests.ttt.conftest import SMOL, binding, smol_model

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Why is the sky blue?",
    "What is a good name for a cat?",
]
SYSTEM = "Answer in two short sentences."
STORY = "Tell me a long story about a dragon who lives by the sea."
RATE = 16000
TARGET_BARGE_IN_MS = 300


def seconds(value: Any) -> float:
    return float(value.ToTimedelta().total_seconds())


def silence(duration_s: float) -> Pcm:
    return Pcm(bytes(int(duration_s * RATE) * 2), RATE)


@dataclass
class Timeline:
    """When each event of one turn arrived (perf_counter seconds)."""

    push_to_talk: bool
    # Where the speech ended: the last chunk sent (push-to-talk), or where the VAD put its end.
    speech_end: float = 0.0
    # When the VAD's end-of-speech event arrived, after the silence it waits for.
    vad_end: float = 0.0
    transcript: float = 0.0
    first_token: float = 0.0
    # When the text showed the first spoken sentence had ended (`sentence_written`).
    sentence_done: float = 0.0
    first_audio: float = 0.0
    # (arrival, length of the text so far) per text delta.
    deltas: list[tuple[float, int]] = field(default_factory=list)
    text: str = ""

    def sentence_written(self, sentence: str) -> float:
        """When the text showed the first sentence had ended: a character after it, or the end
        of the text."""
        needed = self.text.find(sentence) + len(sentence) + 1
        return next((t for t, length in self.deltas if length >= needed), self.deltas[-1][0])

    @property
    def text_written(self) -> float:
        return self.deltas[-1][0]


class Mesh:
    def __init__(self, client: Client) -> None:
        self.client = client

    async def speak(self, text: str) -> Pcm:
        request = common_pb2.GenerateRequest(
            task=common_pb2.TASK_SPEECH,
            inputs=[common_pb2.InputItem(kind=common_pb2.CONTENT_KIND_TEXT, text=text)],
            speech=common_pb2.SpeechParameters(
                format=common_pb2.AUDIO_FORMAT_PCM_S16LE, sample_rate=RATE
            ),
        )
        return Pcm((await self.client.generate(request)).outputs[0].data, RATE)

    def call(self, **options: Any) -> VoiceCall:
        return VoiceCall(self.client, voice_config(language="en", temperature=0.0, **options))

    async def turn(self, question: Pcm, push_to_talk: bool) -> Timeline:
        """One spoken question, timed up to the first audio of its reply."""
        call = self.call(system=SYSTEM, max_tokens=64)
        line = Timeline(push_to_talk)
        started = time.perf_counter()

        async def microphone() -> None:
            await call.stream(question)
            if push_to_talk:
                line.speech_end = time.perf_counter()
                call.end_of_input()
            while True:  # a microphone keeps sending after the user is silent
                await call.stream(silence(1.0))

        sender = asyncio.ensure_future(microphone())
        try:
            async for response in call:
                event, now = response.event, time.perf_counter()
                if event.HasField("voice_activity") and not event.voice_activity.speaking:
                    line.vad_end = now
                    if not push_to_talk:
                        line.speech_end = started + seconds(event.voice_activity.position)
                elif event.HasField("transcript") and event.transcript.is_final:
                    line.transcript = now
                elif event.HasField("text_delta"):
                    line.first_token = line.first_token or now
                    line.text += event.text_delta.text
                    line.deltas.append((now, len(line.text)))
                elif event.HasField("audio_chunk") and not line.first_audio:
                    line.first_audio = now
                    line.sentence_done = line.sentence_written(event.audio_chunk.text)
                elif event.HasField("final"):
                    break
        finally:
            sender.cancel()
            call.hang_up()
        return line

    async def barge_in(self, question: Pcm) -> dict[str, float] | None:
        """Speech over a long reply: from its start (where the VAD put it) to the cut reply's
        final event, which the router sends before the new turn's first event."""
        call = self.call(max_tokens=400)
        call.ask(STORY)
        story = ""
        sent_at = cut = 0.0
        sender: asyncio.Future[None] | None = None
        try:
            async for response in call:
                event, now = response.event, time.perf_counter()
                if event.HasField("audio_chunk") and sender is None:
                    story, sent_at = response.turn_id, now
                    sender = asyncio.ensure_future(call.stream(question))
                elif event.HasField("final") and response.turn_id == story:
                    if event.final.finish_reason != common_pb2.FINISH_REASON_CANCELLED:
                        return None  # the story ended before it could be cut
                    cut = now
                elif event.HasField("voice_activity") and event.voice_activity.speaking and cut:
                    return {"cut_s": cut - sent_at - seconds(event.voice_activity.position)}
        finally:
            if sender is not None:
                sender.cancel()
            call.hang_up()
        return None


def parts(line: Timeline) -> dict[str, float]:
    return {
        "vad_wait": line.vad_end - line.speech_end,
        "recognition": line.transcript - (line.speech_end if line.push_to_talk else line.vad_end),
        "first_token": line.first_token - line.transcript,
        "first_sentence_written": line.sentence_done - line.first_token,
        "first_sentence_synthesis": line.first_audio - line.sentence_done,
        "end_of_speech_to_first_audio": line.first_audio - line.speech_end,
    }


def medians_ms(samples: list[dict[str, float]]) -> dict[str, int]:
    return {f"{k}_ms": round(statistics.median(s[k] for s in samples) * 1000) for k in samples[0]}


async def measure(address: str, key: str, runs: int) -> dict[str, Any]:
    async with Client(address, key) as client:
        mesh = Mesh(client)
        questions = [await mesh.speak(q) for q in QUESTIONS]
        await mesh.turn(questions[0], push_to_talk=True)  # warm every model up
        vad: list[Timeline] = []
        ptt: list[Timeline] = []
        for run in range(runs):
            question = questions[run % len(questions)]
            vad.append(await mesh.turn(question, push_to_talk=False))
            ptt.append(await mesh.turn(question, push_to_talk=True))
        cuts = [c for c in [await mesh.barge_in(q) for q in questions[:runs]] if c is not None]
    lines = vad + ptt
    early = sum(1 for line in lines if line.first_audio < line.text_written)
    vad_parts = medians_ms([parts(line) for line in vad])
    ptt_parts = medians_ms([parts(line) for line in ptt])
    del ptt_parts["vad_wait_ms"]
    results: dict[str, Any] = {
        "runs": runs,
        "vad": vad_parts,
        "push_to_talk": ptt_parts,
        "first_audio_before_text_done": f"{early}/{len(lines)}",
        "replies": [line.text.strip() for line in vad],
    }
    if cuts:
        results["barge_in"] = {
            "cut_ms": round(statistics.median(c["cut_s"] for c in cuts) * 1000),
            "cut_max_ms": round(max(c["cut_s"] for c in cuts) * 1000),
            "runs": len(cuts),
            "target": f"{TARGET_BARGE_IN_MS} ms",
        }
    return results


def report(results: dict[str, Any]) -> None:
    print(f"{results['runs']} questions each way; medians")
    labels = {
        "vad_wait_ms": "silence the VAD waits for",
        "recognition_ms": "recognition (to the final transcript)",
        "first_token_ms": "first token",
        "first_sentence_written_ms": "rest of the first sentence",
        "first_sentence_synthesis_ms": "synthesis of the first sentence",
        "end_of_speech_to_first_audio_ms": "end of speech to first reply audio",
    }
    for mode, title in (("vad", "VAD ends the turn"), ("push_to_talk", "push-to-talk")):
        print(f"{title}:")
        for key, label in labels.items():
            if key in results[mode]:
                print(f"  {label:40} {results[mode][key]:>6} ms")
    print(
        f"first audio before the reply's text was done: {results['first_audio_before_text_done']}"
    )
    cut = results.get("barge_in")
    if cut:
        print(
            f"barge-in: the reply is cut {cut['cut_ms']} ms after the speech over it starts "
            f"(max {cut['cut_max_ms']} ms, target {cut['target']})"
        )


def mesh(stack: contextlib.ExitStack) -> str:
    """Starts a ttt service with SmolLM2, an audio service and a router over them, stopped with
    `stack`; returns the router's address."""
    ttt = ServiceProcess("ttt", {"models": [smol_model()]})
    stack.callback(ttt.terminate)
    audio = ServiceProcess("audio", {})
    stack.callback(audio.terminate)
    bindings = [
        {**binding("smollm2", ttt.address, SMOL), "default": True},
        {"name": "piper", "tasks": ["speech"], "addresses": [audio.address]},
        {"name": "whisper", "tasks": ["transcription"], "addresses": [audio.address]},
    ]
    router = ServiceProcess("router", router_config(bindings))
    stack.callback(router.terminate)
    return router.address


def main() -> None:
    parser = command_line(__doc__)
    service_options(parser, "router", API_KEY, runs=4)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        results = asyncio.run(measure(args.address or mesh(stack), args.api_key, args.runs))
    emit(results, args.json, report)


if __name__ == "__main__":
    main()
