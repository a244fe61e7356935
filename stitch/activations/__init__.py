"""Activations computed once and reused: A's states at source layers and B's targets, in memory or on disk.

>>> from stitch.activations import collect_activations, open_store
>>> store = collect_activations(A, B, texts, source_layers=[8, 16], target_layers=[8, 16], path="runs/cache")
"""

from stitch.activations.collect import cached_activations, collect_activations
from stitch.activations.store import (
    ActivationStore,
    StaleStoreError,
    StoredBatch,
    model_identity,
    open_store,
    store_identity,
)

__all__ = [
    "ActivationStore",
    "StaleStoreError",
    "StoredBatch",
    "cached_activations",
    "collect_activations",
    "model_identity",
    "open_store",
    "store_identity",
]
