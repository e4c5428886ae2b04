"""Deterministic replay of a run from its call log, with no host.

A run is deterministic given its host answers: the child is single-threaded, dispatches calls in
program order (so call ids are stable) and seeds `random` the same way every run. Replaying
answers call N with the logged result N, after checking that the program asked for the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import json_format

from genmesh.sandbox.executor import Executor
from genmesh.v1 import program_pb2


class ReplayHost:
    """Answers each call from the log and notes where the replay asked something different."""

    def __init__(self, call_log: program_pb2.CallLog) -> None:
        self.records = {record.call.call_id: record for record in call_log.calls}
        self.divergences: list[str] = []

    async def call(self, call: program_pb2.FunctionCall) -> program_pb2.FunctionResult:
        record = self.records.get(call.call_id)
        if record is None:
            self.divergences.append(f"call {call.call_id} ({call.source}) is not in the log")
            return program_pb2.FunctionResult(error="replay: call not in the log")
        if record.call.name != call.name or record.call.arguments != call.arguments:
            self.divergences.append(
                f"call {call.call_id}: logged {record.call.source}, replayed {call.source}"
            )
        return record.result


@dataclass
class Replay:
    """A replayed run and how it compares with the logged one."""

    result: program_pb2.ProgramResult
    divergences: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        return not self.divergences


def load(text: str) -> program_pb2.CallLog:
    """A call log from its JSON form (as `--json` prints it or ProgramResult.call_log holds it)."""
    return json_format.Parse(text, program_pb2.CallLog(), ignore_unknown_fields=True)


def printed(call_log: program_pb2.CallLog) -> list[str]:
    """The lines the run printed; they travel in batches made by timing, which differ by run."""
    return [text for line in call_log.logs for text in line.text.split("\n")]


async def replay(call_log: program_pb2.CallLog, executor: Executor) -> Replay:
    """Re-runs the logged program in a fresh jailed child, answering calls from the log."""
    host = ReplayHost(call_log)
    result = await executor.run(call_log.program, host, server_functions=call_log.server_functions)
    divergences = list(host.divergences)
    replayed = result.call_log
    if len(replayed.calls) != len(call_log.calls):
        divergences.append(f"{len(call_log.calls)} calls logged, {len(replayed.calls)} replayed")
    if replayed.result != call_log.result:
        divergences.append("the result differs")
    if replayed.error != call_log.error:
        divergences.append("the error differs")
    if printed(replayed) != printed(call_log):
        divergences.append("the printed output differs")
    return Replay(result, divergences)
