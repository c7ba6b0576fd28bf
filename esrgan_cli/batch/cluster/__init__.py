"""Batches on model replicas: the driver's bookkeeping, the replica worker, and the Ray and local-process pools."""
