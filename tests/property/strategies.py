"""Hypothesis strategies for any genmesh.v1 message, built from its descriptor.

Every field can take any value the wire allows: numbers at and past their limits (NaN, ±inf,
negative, the type's extremes), enums outside their range, empty, huge, control-character and
non-ASCII strings, random bytes behind real and wrong media types, long repeated fields and deep
Structs. Fields whose meaning is known (names, ids, media types, programs) also draw values the
mesh accepts, so examples get past the first check and reach deeper code.
"""

from __future__ import annotations

import io
import math
import wave
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor, duration_pb2, message_factory, struct_pb2
from google.protobuf.message import DecodeError, Message
from hypothesis import reject
from hypothesis import strategies as st
from PIL import Image

from genmesh.client import media_input
from genmesh.v1 import agent_pb2, common_pb2, embedding_pb2, generation_pb2, program_pb2

Field = descriptor.FieldDescriptor
Strategy = st.SearchStrategy[Any]

# Names the test mesh serves, so that requests reach its backends and not only the lookups.
BINDINGS = ["echo", "tti", "piper", "whisper"]
PERSONALITIES = ["assistant", "chat_partner", "illustrator"]
MEDIA_TYPES = [
    "text/plain",
    "image/png",
    "image/jpeg",
    "image/webp",
    "audio/wav",
    "audio/flac",
    "audio/ogg",
    "audio/mpeg",
    "audio/L16",
    "application/pdf",
    "application/json",
    "video/mp4",
    "image/png; charset=\x00",
    "IMAGE/PNG",
]
SIGNATURES = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"RIFF",
    b"RIFF\x24\x00\x00\x00WAVEfmt ",
    b"fLaC",
    b"OggS",
    b"ID3",
    b"%PDF",
]
PROGRAMS = [
    "1 + 1",
    "print('x' * 3)\n[i * i for i in range(5)]",
    "generate_text('hi', max_tokens=4)",
    "generate_text('hi', binding='nowhere')",
    "speak('Hi.')",
    "transcribe('UklGRg==')",
    "generate_image('a red circle', steps=1)",
    "convert(1, 'km', 'm')",
    "search(q='x')",
    "import os",
    "().__class__",
    "while True:\n    pass",
    "def f(:",
]
STUBS = [
    "def search(q: str = None): ...",
    "def search(q):\n    return q",
    "def (",
    "def search(q=open): ...",
    "x = 1",
]
URIS = ["file:///etc/passwd", "data:text/plain;base64,aGk=", "http://127.0.0.1:1/x", "ftp://x"]

INT_RANGES = {
    Field.TYPE_INT32: (-(2**31), 2**31 - 1),
    Field.TYPE_SINT32: (-(2**31), 2**31 - 1),
    Field.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    Field.TYPE_INT64: (-(2**63), 2**63 - 1),
    Field.TYPE_SINT64: (-(2**63), 2**63 - 1),
    Field.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    Field.TYPE_UINT32: (0, 2**32 - 1),
    Field.TYPE_FIXED32: (0, 2**32 - 1),
    Field.TYPE_UINT64: (0, 2**64 - 1),
    Field.TYPE_FIXED64: (0, 2**64 - 1),
}
FLOAT_EDGES = [0.0, -0.0, -1.0, 0.5, 1.0, 2.0, math.nan, math.inf, -math.inf, 3.4e38, 1e-45]


def integers(low: int, high: int) -> Strategy:
    edges = [
        v
        for v in (0, 1, -1, 2, 7, 64, 300, 10**6, low, high, low + 1, high - 1)
        if low <= v <= high
    ]
    return st.one_of(
        st.sampled_from(edges),
        st.integers(-4, 400).filter(lambda v: low <= v <= high),
        st.integers(low, high),
    )


def floats(width: int) -> Strategy:
    return st.one_of(st.sampled_from(FLOAT_EDGES), st.floats(width=width))  # type: ignore[arg-type]


def texts(max_size: int = 24) -> Strategy:
    """Any text: empty, printable, control and non-ASCII characters, and now and then huge."""
    return st.one_of(
        st.just(""),
        st.text(st.characters(codec="ascii"), max_size=max_size),
        st.text(max_size=max_size),
        st.integers(1 << 12, 1 << 16).map(lambda n: "y" * n),
    )


def names(known: list[str]) -> Strategy:
    return st.one_of(st.sampled_from(["", *known]), texts())


def payload_bytes() -> Strategy:
    """Real leading bytes of a media type (perhaps not the one declared), then noise."""
    noise = st.binary(max_size=256)
    signed = st.tuples(st.sampled_from(SIGNATURES), noise).map(lambda p: p[0] + p[1])
    return st.one_of(st.just(b""), noise, signed)


def structs(max_leaves: int = 12) -> Strategy:
    """JSON-like values, shallow and wide or nested far deeper than any parser expects."""
    leaves = st.one_of(st.none(), st.booleans(), floats(64), texts(12))
    trees = st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(texts(8), children, max_size=4)
        ),
        max_leaves=max_leaves,
    )
    deep = st.integers(1, 120).map(nested)
    return st.dictionaries(texts(8), st.one_of(trees, deep), max_size=4)


def nested(depth: int) -> dict[str, Any]:
    """A dict `depth` levels deep."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def to_struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def to_value(value: Any) -> struct_pb2.Value:
    holder = to_struct({"v": value})
    return holder.fields["v"]


WELL_KNOWN: dict[str, Strategy] = {
    "google.protobuf.Struct": structs().map(to_struct),
    "google.protobuf.Value": structs().map(to_value),
    "google.protobuf.Duration": st.builds(
        duration_pb2.Duration,
        seconds=integers(-315_576_000_000, 315_576_000_000),
        nanos=integers(-(2**31), 2**31 - 1),
    ),
}
# Values by field name that a request of the mesh means something by.
HINTS: dict[str, Callable[[], Strategy]] = {
    "request_id": lambda: names(["r-1", "x" * 129]),
    "turn_id": lambda: names(["t-1"]),
    "binding": lambda: names(BINDINGS),
    "personality": lambda: names(PERSONALITIES),
    "mime_type": lambda: st.one_of(st.sampled_from(MEDIA_TYPES), texts()),
    "output_mime_type": lambda: st.one_of(st.sampled_from(MEDIA_TYPES), texts()),
    "data": payload_bytes,
    "uri": lambda: st.one_of(st.sampled_from(URIS), texts()),
    "code": lambda: st.one_of(st.sampled_from(PROGRAMS), texts()),
    "library": lambda: st.one_of(st.sampled_from(["", "def helper(x):\n    return x"]), texts()),
    "client_functions": lambda: st.one_of(st.sampled_from(STUBS), texts()),
    "name": lambda: names(["search", "convert", "generate_text"]),
    "voice": lambda: names(["en_US-joe-medium"]),
    "language": lambda: names(["en", "fr"]),
    "ordered_functions": lambda: st.lists(names(["search"]), max_size=4),
    "stop": lambda: st.one_of(
        st.lists(texts(), max_size=4), st.integers(1000, 20_000).map(lambda n: ["s"] * n)
    ),
    "inputs": lambda: st.one_of(
        st.lists(messages(common_pb2.InputItem.DESCRIPTOR, 1), max_size=4),
        st.integers(1000, 5000).map(lambda n: [common_pb2.InputItem(mime_type="x/y")] * n),
    ),
    "tokens": lambda: st.one_of(
        st.lists(integers(-(2**31), 2**31 - 1), max_size=16),
        st.integers(10_000, 200_000).map(lambda n: [104] * n),
    ),
}
# The message type a hint of a message-typed field is made for (other messages of that name
# are drawn from their descriptor).
HINTED_MESSAGES = {"inputs": "genmesh.v1.InputItem"}


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(out, format="PNG")
    return out.getvalue()


def wav() -> bytes:
    """Half a second of silence, as speech-to-text takes it."""
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(16000)
        file.writeframes(bytes(16000))
    return out.getvalue()


def prompt(text: str) -> common_pb2.InputItem:
    return common_pb2.InputItem(
        kind=common_pb2.CONTENT_KIND_TEXT, role=common_pb2.INPUT_ROLE_USER_PROMPT, text=text
    )


def bases() -> dict[str, list[Message]]:
    """Requests the mesh serves, one per kind of work: the starting points of mutations."""
    image = common_pb2.ImageParameters(steps=1, width=32, height=32)
    server_programs = [program_pb2.Program(code=code) for code in PROGRAMS[:8]]
    client_program = program_pb2.Program(code="search(q='x')", client_functions=STUBS[0])
    return {
        "genmesh.v1.GenerateRequest": [
            common_pb2.GenerateRequest(
                task=common_pb2.TASK_TEXT,
                inputs=[prompt("hello")],
                text=common_pb2.TextParameters(max_tokens=8),
            ),
            common_pb2.GenerateRequest(personality="assistant", inputs=[prompt("hi")]),
            common_pb2.GenerateRequest(personality="illustrator", inputs=[prompt("a red circle")]),
            common_pb2.GenerateRequest(
                task=common_pb2.TASK_IMAGE, inputs=[prompt("a red circle")], image=image
            ),
            common_pb2.GenerateRequest(
                task=common_pb2.TASK_IMAGE_EDIT,
                inputs=[
                    prompt("a blue square"),
                    media_input("image", png(), "image/png"),
                ],
                image=image,
            ),
            common_pb2.GenerateRequest(task=common_pb2.TASK_SPEECH, inputs=[prompt("Hi.")]),
            common_pb2.GenerateRequest(
                task=common_pb2.TASK_TRANSCRIPTION,
                inputs=[media_input("audio", wav(), "audio/wav")],
            ),
        ],
        "genmesh.v1.Program": [*server_programs, client_program],
        "genmesh.v1.ExecuteRequest": [agent_pb2.ExecuteRequest(program=p) for p in server_programs],
        "genmesh.v1.RunStart": [
            agent_pb2.RunStart(program=p) for p in [*server_programs, client_program]
        ],
        "genmesh.v1.ConverseTurn": [generation_pb2.ConverseTurn(inputs=[prompt("again")])],
        "genmesh.v1.EmbedRequest": [
            embedding_pb2.EmbedRequest(
                inputs=[
                    embedding_pb2.EmbedInput(text="a cat"),
                    embedding_pb2.EmbedInput(tokens=embedding_pb2.TokenIds(ids=[4937])),
                ]
            )
        ],
    }


BASES = bases()


def mutate(base: Message, other: Message, draw: Callable[[Strategy], Any], budget: int = 3) -> None:
    """Copies up to `budget` fields of `other` into `base`, here or in nested messages."""
    fields = list(base.DESCRIPTOR.fields)
    for _ in range(draw(st.integers(1, budget))):
        field = draw(st.sampled_from(fields))
        nested = (
            field.type == Field.TYPE_MESSAGE
            and not field.is_repeated
            and base.HasField(field.name)
            and other.HasField(field.name)
        )
        if nested and draw(st.booleans()):
            mutate(getattr(base, field.name), getattr(other, field.name), draw, 1)
            continue
        base.ClearField(field.name)
        if field.is_repeated:
            try:
                getattr(base, field.name).MergeFrom(getattr(other, field.name))
            except DecodeError:
                # Merging a repeated field re-parses it, and a Struct nested past protobuf's
                # decoding depth cannot be (another seed drew one): not a request to send.
                reject()
        elif field.type == Field.TYPE_MESSAGE:
            if other.HasField(field.name):
                getattr(base, field.name).CopyFrom(getattr(other, field.name))
        elif field.has_presence and not other.HasField(field.name):
            continue
        else:
            setattr(base, field.name, getattr(other, field.name))


def near_valid(message: descriptor.Descriptor, random: Strategy) -> Strategy:
    """A request the mesh serves with a few of its fields (perhaps nested) drawn at random."""

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        base: Message = draw(st.sampled_from(BASES[message.full_name]))
        mutated = type(base)()
        mutated.CopyFrom(base)
        mutate(mutated, draw(random), draw)
        return mutated

    return st.one_of(st.sampled_from(BASES[message.full_name]), build())


def scalar(field: descriptor.FieldDescriptor) -> Strategy:
    kind = field.type
    if kind in INT_RANGES:
        return integers(*INT_RANGES[kind])
    if kind == Field.TYPE_FLOAT:
        return floats(32)
    if kind == Field.TYPE_DOUBLE:
        return floats(64)
    if kind == Field.TYPE_BOOL:
        return st.booleans()
    if kind == Field.TYPE_STRING:
        return texts()
    if kind == Field.TYPE_BYTES:
        return payload_bytes()
    if kind == Field.TYPE_ENUM:
        assert field.enum_type is not None
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), integers(-(2**31), 2**31 - 1))
    raise TypeError(f"no strategy for {field.full_name} of type {kind}")


def hint_for(field: descriptor.FieldDescriptor) -> Callable[[], Strategy] | None:
    """The hint for the field's name, unless the field holds messages it was not made for."""
    if field.message_type is not None and (
        field.message_type.full_name != HINTED_MESSAGES.get(field.name)
    ):
        return None
    return HINTS.get(field.name)


def value_of(field: descriptor.FieldDescriptor, depth: int) -> Strategy:
    """A strategy for one value of the field (one element when it is repeated)."""
    hint = hint_for(field)
    if hint is not None and not field.is_repeated:
        return hint()
    if field.message_type is not None:
        return messages(field.message_type, depth + 1)
    return scalar(field)


def field_strategy(field: descriptor.FieldDescriptor, depth: int) -> Strategy:
    if field.is_repeated:
        hint = hint_for(field)
        if hint is not None:
            return hint()
        return st.lists(value_of(field, depth), max_size=4)
    return value_of(field, depth)


def _real_oneofs(message: descriptor.Descriptor) -> list[descriptor.OneofDescriptor]:
    """The message's oneofs, without those proto3 makes for each `optional` field."""
    return [
        o for o in message.oneofs if not (len(o.fields) == 1 and o.name == "_" + o.fields[0].name)
    ]


def _assign(message: Message, field: descriptor.FieldDescriptor, value: Any) -> None:
    if field.is_repeated:
        target = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for entry in value:  # map<K, V> travels as entries; the last of a key wins
                if field.message_type.fields_by_name["value"].message_type is None:
                    target[entry.key] = entry.value
                else:
                    target[entry.key].CopyFrom(entry.value)
        elif field.type == Field.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.type == Field.TYPE_MESSAGE:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def messages(
    message: descriptor.Descriptor, depth: int = 0, opening: bool = False
) -> st.SearchStrategy[Message]:
    """Messages of this type with any subset of fields set and at most one member per oneof;
    `opening` sets the first member of the first oneof (what a stream's first message holds)."""
    if message.full_name in WELL_KNOWN:
        return WELL_KNOWN[message.full_name]
    cls = message_factory.GetMessageClass(message)
    if depth > 6:
        return st.just(cls())
    oneofs = _real_oneofs(message)
    in_oneof = {f.name for o in oneofs for f in o.fields}
    plain = {f.name: field_strategy(f, depth) for f in message.fields if f.name not in in_oneof}
    choices = []
    for index, oneof in enumerate(oneofs):
        members = [st.tuples(st.just(f), value_of(f, depth)) for f in oneof.fields]
        if opening and index == 0:
            choices.append(members[0])
        else:
            choices.append(st.one_of(st.none(), *members))

    def build(values: dict[str, Any], chosen: tuple[Any, ...]) -> Message:
        built: Message = cls()
        for name, value in values.items():
            _assign(built, message.fields_by_name[name], value)
        for choice in chosen:
            if choice is not None:
                _assign(built, *choice)
        return built

    random = st.builds(build, st.fixed_dictionaries({}, optional=plain), st.tuples(*choices))
    if message.full_name in BASES:
        return st.one_of(random, near_valid(message, random))
    return random
