"""The `esrgan` command line: the only package that prints, exits, or uses click and rich.

One module per verb group (`upscale`, `models` for blend/convert/info/models, `train`, `evaluate` for eval). Heavy
modules (torch, numpy, Pillow) are imported inside the commands so that `esrgan --help` and `--version` answer at once.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from esrgan_cli import __version__
from esrgan_cli.cli import evaluate, models, serve, train, upscale
from esrgan_cli.cli.common import SETTINGS, announce_download, say
from esrgan_cli.errors import EsrganError
from esrgan_cli.image.capture import keep_python_stderr, restore_python_stderr

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="esrgan")
@click.option("--debug", is_flag=True, envvar="ESRGAN_DEBUG",
              help="Show the full traceback under each error, and with --ray Ray's own messages, on stderr (also "
                   "ESRGAN_DEBUG=1).")
def cli(debug: bool) -> None:
    """Upscale images 4x with ESRGAN (RRDBNet), seam-free and safely.

    \b
    Examples:
      esrgan upscale photo.jpg -o photo_x4.png
      esrgan upscale scan.tif -o big.tif --tile 256 --model esrgan-psnr-x4
      esrgan upscale art.png -o art.png --model my-model.safetensors --outscale 2
    """
    SETTINGS.debug = SETTINGS.debug or debug


for _module in (upscale, models, train, evaluate, serve):
    _module.register(cli)


def main() -> None:
    """Entry point: expected failures become one line on stderr and an exit code, never a traceback (unless
    --debug). A bug in esrgan itself is not expected, and shows its traceback as always."""
    SETTINGS.debug = os.environ.get("ESRGAN_DEBUG", "") not in ("", "0")
    own_stderr = keep_python_stderr()  # decoders may point fd 2 elsewhere for a moment; our lines must not follow
    try:
        _main()
    finally:
        restore_python_stderr(own_stderr)


def _main() -> None:
    from esrgan_cli.model.hub import on_download

    try:
        with on_download(announce_download):
            cli.main(prog_name="esrgan", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        say("interrupted")
        sys.exit(130)
    except EsrganError as e:
        if SETTINGS.debug:
            traceback.print_exception(e)
        say(f"error: {e}")
        sys.exit(1)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(0)
