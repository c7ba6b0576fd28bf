"""Defaults shared by the CLI and the library, kept free of heavy imports so `--help` stays fast."""

# Input pixels of context around each tile, chosen by measurement with the
# 23-block x4 model at --tile 64 on all of Set5 and Set14
# (benchmarks/tile_overlap.py; table in the README, "Tiling"). Fidelity is set by
# the worst image, not the mean: with 32 pixels the grayscale "bridge" stays
# under 45 dB against the untiled output; 48 clears 50 dB on every image.
DEFAULT_OVERLAP = 48

# Reflected pixels added past the image's edges before the model runs: its convolutions zero-pad there, which pulled
# a white border of compact-x4 down by up to 43/255. 8 brings every bundled model's border within 1/255 of a
# 32-pixel pad (BasicSR's inference pads 10), for about 13 % more arithmetic on a 256×256 image.
EDGE_PAD = 8

# 16384×16384: past this the canvas alone takes gigabytes. --max-output-pixels raises it.
# The smallest tile side: what --tile and the API's tile= accept (besides 0, the whole image), and where halving
# tiles after an out-of-memory stops.
MIN_TILE = 16

DEFAULT_MAX_OUTPUT_PIXELS = 1 << 28

DEFAULT_QUALITY = 95

# BT.601 luma, for one-channel models and grayscale output (metrics.py's Y channel is YCbCr's, scaled differently).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# Image file extensions esrgan writes, and the Pillow format each one means. (It reads every extension Pillow
# reads: `files.image_suffixes()`.)
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
           ".gif": "GIF",
           ".bmp": "BMP"}
# `--format` names → the extension a batch writes: one name for each format in FORMATS, so `--format` takes every
# format `-o FILE` does.
FORMAT_SUFFIXES = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tiff", "gif": ".gif", "bmp": ".bmp"}

# A training run's resume state and configuration in its run folder (training/state.py): named here so that the
# command line can check a --resume before it loads torch.
TRAIN_STATE_FILE = "state.pt"
TRAIN_CONFIG_FILE = "config.json"

# Video (the `video` extra, PyAV). Outputs: the container follows -o's extension. Inputs: these and whatever else
# FFmpeg reads, named on the command line (a folder walk takes only these).
VIDEO_OUTPUT_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov")
VIDEO_SUFFIXES = frozenset(VIDEO_OUTPUT_SUFFIXES + (".m4v", ".avi", ".ts", ".mts", ".m2ts", ".flv", ".wmv", ".mpg",
                                                   ".mpeg", ".ogv", ".3gp", ".y4m", ".nut"))
# --codec names; which of them the installed PyAV encodes is asked only when a video is written (or --help shown).
VIDEO_CODECS = ("h264", "hevc", "vp9", "av1", "ffv1")
VIDEO_INSTALL_HINT = 'pip install ".[video]"'  # esrgan is installed from its checkout, not from an index
