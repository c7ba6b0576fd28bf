"""Training RRDBNet the ESRGAN way: configuration, data, the loss networks, the run folder and the trainer.

The package imports nothing itself, so importing it costs nothing; import the module you need
(`esrgan_cli.training.build` for `build_trainer`, `.trainer`, `.config`, `.data`, `.perceptual`, `.discriminator`).
"""
