"""Video files (the `video` extra, PyAV): probing, decoding with each frame's own timestamp, encoding with the chosen
codec, and muxing the film's other streams and metadata beside the upscaled picture. `pipeline.upscale_video` is
the whole job; nothing here imports PyAV until a video is touched."""
