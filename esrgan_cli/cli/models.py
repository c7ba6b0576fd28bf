"""`esrgan blend`, `convert`, `info` and `models`: working with weight files and the registry."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from esrgan_cli.cli.common import DeviceParam, say
from esrgan_cli.errors import EsrganError

if TYPE_CHECKING:
    from esrgan_cli.model.weights import LoadedWeights


def register(group: click.Group) -> None:
    for command in (blend, convert, info, models):
        group.add_command(command)


def _safetensors_output(path: Path) -> None:
    if path.suffix != ".safetensors":
        raise click.BadParameter(f"{path.name}: the output must be a .safetensors file", param_hint="'-o'")


DTYPE_CHOICE = click.Choice(["auto", "fp16", "fp32"])


def _torch_dtype(name: str, *sources: Any) -> Any:
    """`auto` keeps fp16 when every source was fp16, else fp32."""
    import torch

    if name == "auto":
        return torch.float16 if all(s.source_dtype == torch.float16 for s in sources) else torch.float32
    return {"fp16": torch.float16, "fp32": torch.float32}[name]


@click.command()
@click.argument("model_a", metavar="A")
@click.argument("model_b", metavar="B")
@click.option("--alpha", "alpha_text", required=True, metavar="α|START:STOP:STEP",
              help="Weight of B: 0 gives A, 1 gives B. A range such as 0:1:0.25 writes one file per value.")
@click.option("-o", "--output", "output_path", required=True, type=click.Path(path_type=Path),
              help="Output .safetensors; with several alphas, _alphaX is added to its name for each.")
@click.option("--extrapolate", is_flag=True, help="Allow alpha outside [0, 1].")
@click.option("--dtype", type=DTYPE_CHOICE, default="auto", show_default=True,
              help="Stored precision; auto keeps fp16 when both parents are fp16.")
@click.option("--preview", type=click.Path(path_type=Path, dir_okay=False),
              help="Also upscale this image with every blend and save a labelled contact sheet (OUT_preview.png).")
@click.option("--device", type=DeviceParam(), default="auto", show_default=True, help="Device for --preview.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
def blend(model_a: str, model_b: str, alpha_text: str, output_path: Path, extrapolate: bool, dtype: str,
          preview: Path | None, device: str, quiet: bool) -> None:
    """Network interpolation: (1 - alpha)·A + alpha·B on every weight.

    A is usually the PSNR-oriented model and B the GAN model: small alphas are
    faithful and smooth, large ones sharper with invented texture.

    \b
    Examples:
      esrgan blend esrgan-psnr-x4 esrgan-x4 --alpha 0.6 -o blend60.safetensors
      esrgan blend psnr.pth gan.pth --alpha 0:1:0.25 -o sweep.safetensors --preview photo.png
    """
    _safetensors_output(output_path)
    from esrgan_cli.files import check_folder
    from esrgan_cli.model.blend import blend as blend_weights
    from esrgan_cli.model.blend import check_compatible, parse_alphas
    from esrgan_cli.model.weights import LoadedWeights, save_safetensors, sha256_of

    try:
        alphas = parse_alphas(alpha_text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--alpha'") from None
    if not extrapolate and any(not 0 <= a <= 1 for a in alphas):
        raise click.BadParameter("alpha must be within [0, 1] (or pass --extrapolate)", param_hint="'--alpha'")
    check_folder(output_path)
    a, b = _load_model(model_a), _load_model(model_b)
    check_compatible(a, b)
    out_dtype = _torch_dtype(dtype, a, b)
    targets = [output_path] if len(alphas) == 1 else [
        output_path.with_name(f"{output_path.stem}_alpha{alpha:g}{output_path.suffix}") for alpha in alphas
    ]
    parents = {"esrgan.blend.a": model_a, "esrgan.blend.b": model_b,
               "esrgan.blend.a_sha256": sha256_of(a.path), "esrgan.blend.b_sha256": sha256_of(b.path)}
    blended: list[LoadedWeights] = []
    for alpha, target in zip(alphas, targets, strict=True):
        sd = blend_weights(a, b, alpha)
        save_safetensors(sd, a.config, target, {**parents, "esrgan.blend.alpha": repr(alpha)}, dtype=out_dtype)
        blended.append(LoadedWeights(sd, a.config, {}, target, out_dtype))
        if not quiet:
            say(f"wrote {target} (alpha {alpha:g})")
    if preview is not None:
        _write_preview(preview, blended, alphas, output_path, device, quiet)


def _load_model(spec: str) -> LoadedWeights:
    from esrgan_cli.model.registry import load_named

    return load_named(spec)


def _write_preview(image_path: Path, models: list[LoadedWeights], alphas: list[float], output_path: Path, device: str,
                   quiet: bool) -> None:
    from PIL import Image

    from esrgan_cli.api import load_model
    from esrgan_cli.image.decode import read_image
    from esrgan_cli.image.encode import contact_sheet, write_image

    image = read_image(image_path)
    with Image.open(image_path) as source:
        source.load()
        outputs = [load_model(m, device).upscale(source) for m in models]
    sheet = contact_sheet(outputs, [f"alpha = {a:g}" for a in alphas])
    target = output_path.with_name(f"{output_path.stem}_preview.png")
    write_image(sheet, target, "PNG", image, 95, [])
    if not quiet:
        say(f"wrote {target} ({len(models)} blends of {image_path.name})")


@click.command()
@click.argument("model", metavar="IN")
@click.option("-o", "--output", "output_path", required=True, type=click.Path(path_type=Path),
              help="Output .safetensors file.")
@click.option("--dtype", type=DTYPE_CHOICE, default="auto", show_default=True,
              help="Stored precision; auto keeps the source's.")
@click.option("--true-levels", is_flag=True,
              help="Fold a per-channel gain and offset into the last layer so flat black and white come out as "
                   "themselves (a model that lifts black swamps dark 16-bit images).")
def convert(model: str, output_path: Path, dtype: str, true_levels: bool) -> None:
    """Convert any supported checkpoint to safetensors with canonical keys and metadata.

    \b
    Examples:
      esrgan convert RRDB_ESRGAN_x4.pth -o esrgan_x4.safetensors
      esrgan convert esrgan-psnr-x4 -o psnr.safetensors --dtype fp16
      esrgan convert my_gan.safetensors -o my_gan_levels.safetensors --true-levels
    """
    _safetensors_output(output_path)
    import torch

    from esrgan_cli.files import check_output
    from esrgan_cli.model.weights import save_safetensors, sha256_of

    weights = _load_model(model)
    check_output(weights.path, output_path)
    out_dtype = weights.source_dtype if dtype == "auto" else _torch_dtype(dtype)
    if not out_dtype.is_floating_point or out_dtype == torch.float64:
        out_dtype = torch.float32
    # The source's own description (name, stage, iteration, training settings) stays with the weights.
    kept = {k: v for k, v in weights.metadata.items() if k.startswith("esrgan.") and k not in _REWRITTEN_META}
    meta = {**kept, "esrgan.source": model, "esrgan.source_sha256": sha256_of(weights.path)}
    if true_levels:
        from esrgan_cli.model.levels import measure_levels
        from esrgan_cli.model.levels import true_levels as fold_levels

        before = measure_levels(weights)
        weights = fold_levels(weights, before)
        meta["esrgan.levels"] = f"black {_levels(before.black)}, white {_levels(before.white)} folded to 0 and 1"
        say(f"levels: black came out as {_levels(before.black)}, white as {_levels(before.white)} (of 255); "
            "folded into conv_last")
    save_safetensors(weights.state_dict, weights.config, output_path, meta, dtype=out_dtype)
    say(f"wrote {output_path} ({weights.config.num_block} blocks, x{weights.config.scale}, "
         f"{str(out_dtype).removeprefix('torch.')})")


_REWRITTEN_META = {"esrgan.arch", "esrgan.config", "esrgan.source", "esrgan.source_sha256", "esrgan.levels"}


def _levels(values: tuple[float, ...]) -> str:
    return "/".join(f"{v * 255:.1f}" for v in values)


@click.command()
@click.argument("model", metavar="MODEL")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(model: str, as_json: bool) -> None:
    """Show a model's architecture, scale, size, precision, sha256 and metadata.

    \b
    Examples:
      esrgan info esrgan-x4
      esrgan info my_model.pth --json
    """
    import json

    from esrgan_cli.model.registry import twin_of
    from esrgan_cli.model.weights import describe_weights

    data = describe_weights(_load_model(model), model)
    data["twin"] = twin_of(model)  # the registry's faithful twin (upscale --strength), None for any other model
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key in ("source", "path", "description", "scale", "parameters", "dtype", "macs_per_input_pixel", "sha256",
                "size_bytes", *(("twin",) if data["twin"] else ())):
        value = data[key]
        click.echo(f"{key:>21}: {value:,}" if isinstance(value, int) else f"{key:>21}: {value}")
    for key, value in sorted(dict(data["metadata"]).items()):  # type: ignore[call-overload]
        click.echo(f"{'metadata ' + key:>21}: {value}")


@click.group()
def models() -> None:
    """List the registry's models, or download them for offline use."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models_list(as_json: bool) -> None:
    """Name, scale, size, license, and whether each model is cached for offline use."""
    import dataclasses
    import json

    from esrgan_cli.api import available_models

    infos = available_models()
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(m) for m in infos], indent=2))
        return
    width = max(18, *(len(m.name) + 2 for m in infos))  # room for the longest name and the default's " *"
    lic = max(12, *(len(m.license) + 1 for m in infos))
    twin = max(5, *(len(m.twin or "") + 1 for m in infos))
    click.echo(f"{'name':<{width}} {'scale':>5} {'size':>8}  {'license':<{lic}} {'cached':<6} {'twin':<{twin}} "
               "description")
    for m in infos:
        mb = m.size_bytes / 1e6 if m.size_bytes else None
        size = "?" if mb is None else f"{mb:.1f} MB" if mb < 10 else f"{mb:.0f} MB"
        name = f"{m.name}{' *' if m.default else ''}"
        click.echo(f"{name:<{width}} {'x' + str(m.scale):>5} {size:>8}  {m.license:<{lic}} "
                   f"{'yes' if m.cached else 'no':<6} {m.twin or '-':<{twin}} {m.description}")
    click.echo("(* default; twin: the faithful model that upscale --strength interpolates towards)")


@models.command("download")
@click.argument("names", nargs=-1, required=True)
def models_download(names: tuple[str, ...]) -> None:
    """Fetch and verify models now, so later runs work offline.

    \b
    Example:
      esrgan models download esrgan-x4 esrgan-psnr-x4
    """
    from esrgan_cli.model.registry import load_registry, resolve_model

    registry = load_registry()
    failed = 0
    for name in names:
        try:
            resolved = resolve_model(name, registry)
            say(f"{name}: ready ({resolved.path})")
        except EsrganError as e:
            failed += 1
            say(f"error: {e}")
    if failed:
        raise SystemExit(1)
