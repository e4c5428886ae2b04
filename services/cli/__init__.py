"""The `genmesh` command. Each command group lives in its own module and registers here."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import click
import grpc
from google.protobuf import json_format

from genmesh.cli.agent import agent
from genmesh.cli.audio import speak, transcribe
from genmesh.cli.embed import embed
from genmesh.cli.image import image
from genmesh.cli.sandbox import sandbox
from genmesh.cli.talk import talk
from genmesh.cli.up import up
from genmesh.client import DEFAULT_ADDRESS, Client, json_schema, text_request
from genmesh.runtime.server import run
from genmesh.v1 import catalog_pb2, common_pb2

SERVICES = ("router", "ttt", "tti", "audio", "sandbox", "edge")

address_option = click.option(
    "--address",
    default=DEFAULT_ADDRESS,
    envvar="GENMESH_ADDRESS",
    show_default=True,
    help="Router address.",
)
key_option = click.option(
    "--api-key",
    envvar="GENMESH_API_KEY",
    default=None,
    help="API key (default: GENMESH_API_KEY, else the key saved by `genmesh up`).",
)


def call(coroutine: Awaitable[Any]) -> Any:
    """Runs a client coroutine; a gRPC error becomes a one-line message and exit status 1."""
    try:
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    except grpc.aio.AioRpcError as error:
        click.echo(f"error: {error.code().name}: {error.details()}", err=True)
        raise SystemExit(1) from None


@click.group()
@click.version_option(package_name="genmesh")
def main() -> None:
    """genmesh: a multi-modal generation mesh."""


@main.command()
@click.argument("service", type=click.Choice(SERVICES))
def serve(service: str) -> None:
    """Run one service (settings from GENMESH_<SERVICE>_* and the GENMESH_CONFIG file)."""
    module = importlib.import_module(f"genmesh.{service}.server")
    entry: Callable[[], Coroutine[Any, Any, None]] = module.main
    run(entry)


@main.command()
@address_option
@key_option
@click.option("--binding", default="", help="Binding instance (default: the text default).")
@click.option("--personality", default="")
@click.option("--model", default="")
@click.option("--system", default="", help="System prompt.")
@click.option("--max-tokens", type=int, default=None)
@click.option("--temperature", type=float, default=None)
@click.option("--seed", type=int, default=None)
@click.option(
    "--json-schema",
    "schema_file",
    type=click.File(),
    help="Constrain the output to JSON valid against the schema in this file.",
)
@click.option("--regex", default=None, help="Constrain the output to match this regex.")
@click.option(
    "--grammar", "grammar_file", type=click.File(), help="Constrain the output to this GBNF file."
)
@click.option("--choice", "choices", multiple=True, help="An allowed output (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the final result as JSON.")
@click.argument("prompt")
def generate(
    address: str,
    api_key: str | None,
    binding: str,
    personality: str,
    model: str,
    system: str,
    max_tokens: int | None,
    temperature: float | None,
    seed: int | None,
    schema_file: Any,
    regex: str | None,
    grammar_file: Any,
    choices: tuple[str, ...],
    as_json: bool,
    prompt: str,
) -> None:
    """Generate text, streamed to the terminal."""
    parameters = common_pb2.TextParameters(
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        constraint=constraint(schema_file, regex, grammar_file, choices),
    )
    request = text_request(
        prompt,
        binding=binding,
        personality=personality,
        model=model,
        system=system,
        parameters=parameters,
    )

    async def stream() -> None:
        async with Client(address, api_key) as client:
            async for event in client.generate_stream(request):
                kind = event.WhichOneof("event")
                if kind == "text_delta" and not as_json:
                    sys.stdout.write(event.text_delta.text)
                    sys.stdout.flush()
                elif kind == "final":
                    if as_json:
                        click.echo(json_format.MessageToJson(event.final))
                    else:
                        click.echo()

    call(stream())


def constraint(
    schema_file: Any, regex: str | None, grammar_file: Any, choices: tuple[str, ...]
) -> common_pb2.OutputConstraint | None:
    """The one output constraint the options ask for, if any."""
    given = [o for o in (schema_file, regex, grammar_file, choices) if o]
    if len(given) > 1:
        raise click.UsageError("give one of --json-schema, --regex, --grammar and --choice")
    if schema_file:
        try:
            return json_schema(json.load(schema_file))
        except (ValueError, AttributeError) as exc:
            hint = "--json-schema"
            raise click.BadParameter(f"not a JSON object: {exc}", param_hint=hint) from None
    if regex:
        return common_pb2.OutputConstraint(regex=regex)
    if grammar_file:
        return common_pb2.OutputConstraint(grammar=grammar_file.read())
    if choices:
        return common_pb2.OutputConstraint(choices=common_pb2.ChoiceList(choices=choices))
    return None


@main.command()
@address_option
@key_option
@click.argument("what", type=click.Choice(["bindings", "personalities", "functions", "models"]))
@click.option("--json", "as_json", is_flag=True)
def catalog(address: str, api_key: str | None, what: str, as_json: bool) -> None:
    """List what the mesh offers."""

    async def fetch() -> Any:
        async with Client(address, api_key) as client:
            stub, meta = client.catalog, client.metadata
            if what == "bindings":
                return await stub.ListBindings(catalog_pb2.ListBindingsRequest(), metadata=meta)
            if what == "personalities":
                return await stub.ListPersonalities(
                    catalog_pb2.ListPersonalitiesRequest(), metadata=meta
                )
            if what == "functions":
                return await stub.ListFunctions(catalog_pb2.ListFunctionsRequest(), metadata=meta)
            return await stub.ListModels(catalog_pb2.ListModelsRequest(), metadata=meta)

    response = call(fetch())
    data = json_format.MessageToDict(response)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for entry in next(iter(data.values()), []):
        name = entry.get("name", "")
        rest = {k: v for k, v in entry.items() if k not in ("name", "details")}
        click.echo(f"{name:24} {json.dumps(rest)}")


main.add_command(up)
main.add_command(agent)
main.add_command(sandbox)
main.add_command(speak)
main.add_command(transcribe)
main.add_command(talk)
main.add_command(image)
main.add_command(embed)
