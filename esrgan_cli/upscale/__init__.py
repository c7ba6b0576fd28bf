"""Running a model on an image: device and precision, tile geometry and sizing, the block-by-block compute engine, the
per-image pipeline, and the public `Upscaler`.
"""
