"""Real-world degradations (blur kernels, noise, resizing, JPEG), shared by training and evaluation."""
