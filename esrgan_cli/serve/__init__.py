"""`esrgan serve`'s web page: a local server that upscales dropped files through the same library calls as
`esrgan upscale`. `app.py` is the only module that imports the `web` extra (Starlette); the rest is plain Python."""
