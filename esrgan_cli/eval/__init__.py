"""Scoring a model against reference images: per-image metrics, the perceptual distance, and real-world test sets."""
