"""Training RRDBNet the ESRGAN way: configuration, data, losses' networks and the trainer.

Nothing is imported here, so `import esrgan_cli.training.config` does not pull in torch's training machinery; import
the module you need (`esrgan_cli.training.trainer`, `.config`, `.data`, `.perceptual`, `.discriminator`).
"""
