"""Defaults shared by the CLI and the library, kept free of heavy imports so `--help` stays fast."""

# Input pixels of context around each tile. Chosen by measurement with the
# 23-block x4 model at --tile 64 on Set5 and Set14 (benchmarks/tile_overlap.py,
# README "Tiling"); see that section for the table.
DEFAULT_OVERLAP = 24

# 16384×16384: past this the canvas alone takes gigabytes. --max-output-pixels raises it.
DEFAULT_MAX_OUTPUT_PIXELS = 1 << 28

DEFAULT_QUALITY = 95
