"""`genmesh image`: text-to-image, image-to-image and inpainting through the router."""

from __future__ import annotations

import asyncio
import mimetypes
from pathlib import Path

import click
import grpc

from genmesh.client import DEFAULT_ADDRESS, Client, error_details
from genmesh.v1 import common_pb2

SUFFIX_MIME_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
}


def image_request(
    prompt: str,
    *,
    parameters: common_pb2.ImageParameters | None = None,
    init_image: tuple[bytes, str] | None = None,
    mask: tuple[bytes, str] | None = None,
    binding: str = "",
    model: str = "",
    request_id: str = "",
) -> common_pb2.GenerateRequest:
    """A typed image request; `init_image` and `mask` are (bytes, mime type) and make it an edit."""
    inputs = [
        common_pb2.InputItem(
            kind=common_pb2.CONTENT_KIND_TEXT, role=common_pb2.INPUT_ROLE_USER_PROMPT, text=prompt
        )
    ]
    for item, role in (
        (init_image, common_pb2.INPUT_ROLE_INPUT_IMAGE),
        (mask, common_pb2.INPUT_ROLE_MASK_IMAGE),
    ):
        if item is not None:
            data, mime_type = item
            inputs.append(
                common_pb2.InputItem(
                    kind=common_pb2.CONTENT_KIND_IMAGE, role=role, data=data, mime_type=mime_type
                )
            )
    return common_pb2.GenerateRequest(
        request_id=request_id,
        task=common_pb2.TASK_IMAGE_EDIT if init_image else common_pb2.TASK_IMAGE,
        binding=binding,
        model=model,
        inputs=inputs,
        image=parameters or common_pb2.ImageParameters(),
    )


def _read(path: Path | None) -> tuple[bytes, str] | None:
    if path is None:
        return None
    return path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int]:
    if value is None:
        return 0, 0
    width, sep, height = value.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise click.BadParameter("expected WIDTHxHEIGHT, e.g. 512x512")
    return int(width), int(height)


@click.command()
@click.option("--address", default=DEFAULT_ADDRESS, envvar="GENMESH_ADDRESS", show_default=True)
@click.option("--api-key", envvar="GENMESH_API_KEY", default=None)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--init-image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Image to transform (image-to-image), or to inpaint with --mask.",
)
@click.option(
    "--mask",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Inpainting mask, the size of the init image: white is repainted, black kept.",
)
@click.option("--steps", type=int, default=None, help="Denoising steps.")
@click.option("--seed", type=int, default=None, help="Seed; the same seed gives the same image.")
@click.option("--size", callback=_size, default=None, help="WIDTHxHEIGHT (default: the model's).")
@click.option("--guidance", type=float, default=None, help="Classifier-free guidance scale.")
@click.option("--strength", type=float, default=None, help="Image-to-image strength in (0, 1].")
@click.option("--negative", default="", help="What the image should not show.")
@click.option("--count", type=int, default=1, show_default=True, help="Images to generate.")
@click.option("--binding", default="", help="Binding instance (default: the image default).")
@click.argument("prompt")
def image(
    address: str,
    api_key: str | None,
    output: Path,
    init_image: Path | None,
    mask: Path | None,
    steps: int | None,
    seed: int | None,
    size: tuple[int, int],
    guidance: float | None,
    strength: float | None,
    negative: str,
    count: int,
    binding: str,
    prompt: str,
) -> None:
    """Generate an image from PROMPT into OUTPUT (PNG, JPEG or WebP by suffix).

    With --count N above 1 the files are named OUTPUT-1, OUTPUT-2, ... before the suffix.
    """
    mime_type = SUFFIX_MIME_TYPES.get(output.suffix.lower())
    if mime_type is None:
        raise click.BadParameter("use a .png, .jpg or .webp file name", param_hint="--output")
    if mask is not None and init_image is None:
        raise click.BadParameter("--mask needs --init-image", param_hint="--mask")
    parameters = common_pb2.ImageParameters(
        negative_prompt=negative,
        steps=steps,
        guidance_scale=guidance,
        seed=seed,
        width=size[0],
        height=size[1],
        count=count,
        strength=strength,
        output_mime_type=mime_type,
    )
    request = image_request(
        prompt,
        parameters=parameters,
        init_image=_read(init_image),
        mask=_read(mask),
        binding=binding,
    )

    async def run() -> common_pb2.GenerateResponse:
        final = common_pb2.GenerateResponse()
        async with Client(address, api_key) as client:
            async for event in client.generate_stream(request):
                kind = event.WhichOneof("event")
                if kind == "progress":
                    click.echo(
                        f"\rstep {event.progress.step}/{event.progress.total_steps}",
                        nl=False,
                        err=True,
                    )
                elif kind == "final":
                    final = event.final
        click.echo(err=True)
        return final

    try:
        final = asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        details = error_details(error)
        click.echo(f"error: {details.code.name}: {details.message}", err=True)
        for field, description in details.violations.items():
            click.echo(f"  {field}: {description}", err=True)
        raise SystemExit(1) from None
    outputs = list(final.outputs)
    for index, item in enumerate(outputs, start=1):
        path = output if len(outputs) == 1 else output.with_stem(f"{output.stem}-{index}")
        path.write_bytes(item.data)
        click.echo(f"{path} (seed {item.seed})")
