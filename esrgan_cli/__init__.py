"""esrgan: upscale images with ESRGAN (RRDBNet)."""

__version__ = "0.1.0"
