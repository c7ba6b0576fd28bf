"""Networks and their weights: the RRDBNet architecture, checkpoint layouts, loading and saving, the model registry and
Hub downloads, blending, level folding, and the VGG19 feature network.
"""
