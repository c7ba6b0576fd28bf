"""Training RRDBNet the ESRGAN way: configuration, data, the loss networks, the run folder and the trainer; and
the real-world way (Real-ESRGAN's degradation model, distillation from a teacher).

The package imports nothing itself, so importing it costs nothing; import the module you need
(`esrgan_cli.training.build` for `build_trainer`, `.trainer`, `.config`, `.data`, `.perceptual`, `.discriminator`,
`.degradation` with `.kernels` and `.jpeg`, `.teacher`).
"""
