"""The voice loop on Converse, end to end: speech in, a spoken reply out, barge-in, hang-up,
and bad input, against the real router, language model, voice and recogniser."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import grpc
import pytest

from genmesh.cli.talk import Pcm, Turn, VoiceCall, voice_config
from genmesh.client import Client, error_details
from genmesh.v1 import common_pb2, generation_pb2
from tests.audio.conftest import word_error_rate
from tests.support import ServiceProcess, run_cli
from tests.ttt.conftest import Inference
from tests.voice.conftest import QUESTION, RATE, Heard, silence, transcribe, wav_bytes

# A reply long enough to speak over: the echo model writes it back at 30 ms a character.
STORY = (
    "Once upon a time, a small dragon lived in a cave by the sea. "
    "Every morning it flew over the village to watch the fishing boats. "
    "The children waved, and the dragon waved back with its tail. "
    "One day a storm came, and the boats could not find the harbour. "
    "The dragon lit the sky with its fire, and every boat came home."
)


def echo_config(request_id: str, delay_ms: int = 30) -> generation_pb2.VoiceConfig:
    """Replies from the echo model: the user's words back, `delay_ms` a character."""
    config = voice_config(binding="echo-smol", language="en")
    config.chat.request_id = request_id
    config.chat.extra.update({"delay_ms": delay_ms})
    return config


async def next_final(call: VoiceCall, heard: Heard) -> Turn:
    """Reads events up to a turn's final event; returns that turn."""
    async for response in call:
        turn = heard.take(response)
        if response.event.HasField("final"):
            return turn
    raise AssertionError("the conversation ended before a turn did")


async def test_a_spoken_question_gets_a_spoken_answer(voice_client: Client, question: Pcm) -> None:
    config = voice_config(
        system="Answer in one short sentence.", max_tokens=48, temperature=0.0, language="en"
    )
    call = VoiceCall(voice_client, config)
    call.send(*question.chunks())
    call.close()
    heard = Heard()
    await heard.rest(call)

    assert len(heard.turns) == 1
    (turn,) = heard.turns.values()
    kinds = heard.kinds(turn.turn_id)
    assert kinds[0] == "voice_activity" and kinds[-1] == "final"
    assert kinds.index("transcript") < kinds.index("text_delta") < kinds.index("audio_chunk")
    ended = [r.event.voice_activity for r in heard.responses if r.event.HasField("voice_activity")]
    assert [a.speaking for a in ended] == [True, False]
    assert word_error_rate(QUESTION, turn.transcript) <= 0.2, turn.transcript

    assert turn.final is not None and turn.final.finish_reason in (
        common_pb2.FINISH_REASON_STOP,
        common_pb2.FINISH_REASON_LENGTH,
    )
    assert turn.text.strip() and turn.final.outputs[0].text == turn.text
    chunks = [r.event.audio_chunk for r in heard.responses if r.event.HasField("audio_chunk")]
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    assert all(c.text and c.text in turn.text and c.duration.ToNanoseconds() > 0 for c in chunks)
    spoken = await transcribe(voice_client, turn.pcm)
    assert word_error_rate(" ".join(c.text for c in chunks), spoken) <= 0.35, (turn.text, spoken)


async def test_speech_over_a_reply_cuts_it_and_is_answered(
    voice_client: Client, question: Pcm
) -> None:
    call = VoiceCall(voice_client, echo_config("voice-barge-in"))
    call.ask(STORY)
    heard = Heard()
    story = await heard.until_first_audio(call)
    call.send(*question.chunks())
    call.close()
    await heard.rest(call)

    # The story was cut: its final says so and keeps only the sentences that began to play.
    assert story.final is not None
    assert story.final.finish_reason == common_pb2.FINISH_REASON_CANCELLED
    kept = story.final.outputs[0].text
    assert kept and STORY.startswith(kept) and len(kept) < len(STORY)
    # The question that cut it was heard and answered (the echo says it back), in a new turn.
    (answer,) = [t for t in heard.turns.values() if t is not story]
    order = [r.turn_id for r in heard.responses]
    assert order.index(answer.turn_id) > len(order) - 1 - order[::-1].index(story.turn_id)
    assert word_error_rate(QUESTION, answer.transcript) <= 0.2, answer.transcript
    assert answer.final is not None
    assert answer.final.finish_reason == common_pb2.FINISH_REASON_STOP
    assert answer.text == answer.transcript and answer.audio


async def test_hanging_up_stops_the_model_and_the_voice(
    voice_client: Client,
    smol_ttt: ServiceProcess,
    audio: ServiceProcess,
    voice_router: ServiceProcess,
) -> None:
    request_id = "voice-hang-up"
    call = VoiceCall(voice_client, echo_config(request_id))
    call.ask(STORY)
    turn = await Heard().until_first_audio(call)
    call.hang_up()

    # The model's generation ended cancelled, long before the story was written.
    ended = smol_ttt.wait_for_event("generation ended", request_id=request_id, model="echo")
    assert ended["outcome"] == "cancelled by client or deadline"
    reply = voice_router.wait_for_event("voice reply ended", turn_id=turn.turn_id)
    assert reply["outcome"] == "client gone"
    # No synthesis runs or waits any more, and none starts after.
    async with grpc.aio.insecure_channel(audio.address) as channel:
        voice = Inference(channel)
        await voice.until_idle((await voice.info("")).model.name)
        before = syntheses(audio, request_id)
        await asyncio.sleep(1.0)
        assert syntheses(audio, request_id) == before
    assert len(before) <= reply["sentences"] + 1 < STORY.count(". ")


async def test_cancel_stops_the_reply_and_the_conversation_goes_on(voice_client: Client) -> None:
    call = VoiceCall(voice_client, echo_config("voice-cancel"))
    call.ask(STORY)
    heard = Heard()
    story = await heard.until_first_audio(call)
    call.control(common_pb2.Control.ACTION_CANCEL)
    assert await next_final(call, heard) is story
    assert story.final is not None
    assert story.final.finish_reason == common_pb2.FINISH_REASON_CANCELLED
    call.ask("Hello there.")
    call.close()
    await heard.rest(call)
    (hello,) = [t for t in heard.turns.values() if t is not story]
    assert hello.text == "Hello there." and hello.audio
    assert hello.final is not None and hello.final.finish_reason == common_pb2.FINISH_REASON_STOP


async def test_end_of_input_ends_each_turn_without_waiting_for_silence(
    voice_client: Client, question: Pcm
) -> None:
    speech = Pcm(question.data[: len(question.data) - 2 * RATE], RATE)  # no silence after it
    call = VoiceCall(voice_client, echo_config("voice-push-to-talk", delay_ms=0))
    heard = Heard()
    for _ in range(2):  # each turn on a recognition stream of its own
        call.send(*speech.chunks())
        call.end_of_input()
        await next_final(call, heard)
    call.close()
    await heard.rest(call)
    assert len(heard.turns) == 2
    for turn in heard.turns.values():
        assert word_error_rate(QUESTION, turn.transcript) <= 0.2, turn.transcript
        assert turn.text == turn.transcript and turn.audio
        assert turn.final is not None
        assert turn.final.finish_reason == common_pb2.FINISH_REASON_STOP


def syntheses(audio: ServiceProcess, request_id: str) -> list[dict[str, object]]:
    """The voice's ended syntheses for this request (recognitions count segments instead)."""
    ended = audio.events("generation ended")
    return [e for e in ended if e.get("request_id") == request_id and "sentences" in e]


def chunk(data: bytes, **fields: object) -> generation_pb2.ConverseRequest:
    return generation_pb2.ConverseRequest(
        audio=common_pb2.AudioChunk(data=data, **fields)  # type: ignore[arg-type]
    )


CLIENT_SIDE_INTERNAL = "Internal error from Core"
BAD = {
    "audio before the config": (
        [chunk(bytes(3200), mime_type="audio/pcm", sample_rate=RATE)],
        "config",
    ),
    "a sample rate out of range": (
        [
            generation_pb2.ConverseRequest(voice=voice_config()),
            chunk(bytes(3200), mime_type="audio/pcm", sample_rate=1000),
        ],
        "audio",
    ),
    "a file instead of raw PCM": (
        [
            generation_pb2.ConverseRequest(voice=voice_config()),
            chunk(wav_bytes(silence(0.2)), mime_type="audio/wav"),
        ],
        "audio.mime_type",
    ),
    "a silence too long to end a turn": (
        [generation_pb2.ConverseRequest(voice=voice_config(silence=20.0))],
        "transcription.end_of_speech_silence",
    ),
    "a second config": (
        [
            generation_pb2.ConverseRequest(voice=voice_config()),
            generation_pb2.ConverseRequest(voice=voice_config()),
        ],
        "voice",
    ),
    "replies that are not text": (
        [
            generation_pb2.ConverseRequest(
                voice=generation_pb2.VoiceConfig(
                    chat=common_pb2.GenerateRequest(task=common_pb2.TASK_IMAGE)
                )
            )
        ],
        "voice.chat.task",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_input_is_refused_naming_the_field(voice_client: Client, case: str) -> None:
    messages, field = BAD[case]
    # grpcio's asyncio client (grpc/grpc#36066) sometimes replaces the server's status with its
    # own INTERNAL "Internal error from Core" when a write is still in flight as the server ends
    # the call; the router sent its status all the same, so such a call is asked again.
    for _ in range(3):
        call = voice_client.generation.Converse(iter(messages), metadata=voice_client.metadata)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        if caught.value.details() != CLIENT_SIDE_INTERNAL:
            break
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert field in details.violations, details


def test_talk_answers_a_wav_file_with_a_wav_file(
    voice_router: ServiceProcess, question: Pcm, tmp_path: Path
) -> None:
    asked, answered = tmp_path / "question.wav", tmp_path / "answer.wav"
    asked.write_bytes(wav_bytes(question))
    talked = run_cli(
        voice_router,
        "talk",
        str(asked),
        "-o",
        str(answered),
        "--language",
        "en",
        "--max-tokens",
        "32",
        "--system",
        "Answer in one short sentence.",
    )
    assert talked.returncode == 0, talked.stderr
    lines = talked.stdout.splitlines()
    heard = next(line for line in lines if line.startswith("you: "))
    assert word_error_rate(QUESTION, heard[5:]) <= 0.2, lines
    assert any(line.startswith("genmesh: ") and len(line) > 10 for line in lines), lines
    with wave.open(str(answered)) as wav:
        assert wav.getnchannels() == 1 and wav.getnframes() > wav.getframerate() // 2


@pytest.mark.parametrize("cut", ["control", "turn"])
async def test_a_reply_cut_as_it_starts_stops_and_still_ends_its_turn(
    voice_client: Client, cut: str
) -> None:
    # The cut is read with the turn it cuts: the reply may not have started yet, or be just
    # getting its slot of the model (where a lost cancel once let it write on to the end).
    config = echo_config(f"voice-cut-at-once-{cut}")
    config.chat.text.max_tokens = len(STORY)  # the whole story, if nothing stops it
    call = VoiceCall(voice_client, config)
    call.ask(STORY, turn_id="story")
    if cut == "control":
        call.control(common_pb2.Control.ACTION_CANCEL)
    call.ask("Hello there.", turn_id="hello")
    call.close()
    heard = Heard()
    await heard.rest(call)

    assert set(heard.turns) == {"story", "hello"}
    story, hello = heard.turns["story"], heard.turns["hello"]
    assert story.final is not None
    assert story.final.finish_reason == common_pb2.FINISH_REASON_CANCELLED
    assert len(story.text) < len(STORY) and heard.kinds("story")[-1] == "final"
    assert hello.text == "Hello there." and hello.audio
    assert hello.final is not None and hello.final.finish_reason == common_pb2.FINISH_REASON_STOP


async def test_a_client_that_does_not_read_holds_the_reply_back(
    voice_client: Client,
    smol_ttt: ServiceProcess,
    audio: ServiceProcess,
    voice_router: ServiceProcess,
) -> None:
    request_id = "voice-not-reading"
    sentence = "The dragon flew over the sea, and every boat came home. "
    count = 15000
    config = echo_config(request_id, delay_ms=0)
    config.chat.text.max_tokens = len(sentence) * count
    config.chat.extra.update({"repeat": count})
    call = VoiceCall(voice_client, config)
    call.ask(sentence)

    # Unread, the reply is held back: once the transport's buffers and the router's few queued
    # events are full, the model waits (it once ran on, the reply piling up in the router).
    # From its first sentence spoken (waited for in a thread: the call needs this loop).
    await asyncio.to_thread(audio.wait_for_event, "generation ended", request_id=request_id)
    await asyncio.sleep(2.0)
    assert not [e for e in smol_ttt.events("generation ended") if e["request_id"] == request_id]

    # Read, it goes on.
    turn = await Heard().until_first_audio(call)
    call.hang_up()
    reply = voice_router.wait_for_event("voice reply ended", turn_id=turn.turn_id)
    assert reply["outcome"] == "client gone"
    # The model stopped where the buffers between it and the voice filled, far short of the reply.
    ended = smol_ttt.wait_for_event("generation ended", request_id=request_id)
    assert ended["completion_tokens"] < len(sentence) * count // 2
