"""`genmesh sandbox replay LOG.json`: re-runs a logged program locally with no host."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click
from google.protobuf import json_format

from genmesh.cli.agent import print_error
from genmesh.runtime.values import py_from_value
from genmesh.sandbox import replay as replaying
from genmesh.sandbox.executor import Executor, program_violations
from genmesh.v1 import program_pb2


def load_call_log(path: Path) -> program_pb2.CallLog:
    """A call log from a file: a bare CallLog, a ProgramResult or `agent run --json` output."""
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "call_log" in data:
            data = data["call_log"]
        call_log = json_format.ParseDict(data, program_pb2.CallLog(), ignore_unknown_fields=True)
    except (ValueError, TypeError, json_format.ParseError) as exc:
        raise click.ClickException(f"{path} is not a call log: {exc}") from None
    problems = program_violations(call_log.program)
    if problems:
        details = "; ".join(f"{v.field}: {v.description}" for v in problems)
        raise click.ClickException(f"{path} holds a program that cannot run: {details}")
    return call_log


@click.group()
def sandbox() -> None:
    """Work with sandbox runs."""


@sandbox.command()
@click.option("--json", "as_json", is_flag=True, help="Print the replayed result as JSON.")
@click.argument("log_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def replay(as_json: bool, log_file: Path) -> None:
    """Replay LOG_FILE in a local jailed child, answering calls from the log."""
    call_log = load_call_log(log_file)

    async def go() -> replaying.Replay:
        executor = Executor()
        await executor.start()
        try:
            return await replaying.replay(call_log, executor)
        finally:
            await executor.stop()

    outcome = asyncio.run(go())
    result = outcome.result
    if as_json:
        click.echo(
            json.dumps(
                {
                    "matches": outcome.matches,
                    "divergences": outcome.divergences,
                    "result": json_format.MessageToDict(result),
                },
                indent=2,
            )
        )
    else:
        for line in result.call_log.logs:
            click.echo(line.text)
        if result.HasField("error"):
            print_error(result.error)
        else:
            click.echo(json.dumps(py_from_value(result.value), indent=2))
        click.echo("replay matches the log" if outcome.matches else "replay DIVERGED:", err=True)
        for divergence in outcome.divergences:
            click.echo(f"  {divergence}", err=True)
    if not outcome.matches:
        sys.exit(1)
