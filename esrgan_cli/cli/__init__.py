"""The `esrgan` command line: the only package that prints, exits, or uses click and rich.

One module per verb group (`upscale`, `models` for blend/convert/info/models, `train` for train/eval). Heavy modules
(torch, numpy, Pillow) are imported inside the commands so that `esrgan --help` and `--version` answer at once.
"""

from __future__ import annotations

import sys

import click

from esrgan_cli import __version__
from esrgan_cli.cli import models, train, upscale
from esrgan_cli.cli.common import say
from esrgan_cli.errors import EsrganError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="esrgan")
def cli() -> None:
    """Upscale images 4x with ESRGAN (RRDBNet), seam-free and safely.

    \b
    Examples:
      esrgan upscale photo.jpg -o photo_x4.png
      esrgan upscale scan.tif -o big.tif --tile 256 --model esrgan-psnr-x4
      esrgan upscale art.png -o art.png --model my-model.safetensors --outscale 2
    """


for _module in (upscale, models, train):
    _module.register(cli)


def main() -> None:
    """Entry point: expected failures become one line on stderr and an exit code, never a traceback."""
    try:
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
        say(f"error: {e}")
        sys.exit(1)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(0)
