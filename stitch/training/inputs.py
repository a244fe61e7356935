"""Where a run's micro-batches come from: the models every step (`cache: none`) or an activation store.

    >>> inputs = training_inputs(A, B, texts, config, layers=[(8, 8)], objectives=objs, dist=dist)
    >>> inputs.prepare([3, 1, 4])

`memory` builds the store in every rank's memory; a directory is built once by rank 0 (or reused when its
manifest matches the run, refused with the reason when it does not) and read by every rank.
"""

from __future__ import annotations

from stitch.activations.collect import cached_activations
from stitch.activations.store import open_store, store_identity
from stitch.training import distributed
from stitch.training.step import CachedInputs, LiveInputs


def training_inputs(A, B, texts, config, layers, objectives, dist: distributed.Dist, progress: bool = False):
    sources = sorted({n for n, _ in layers})
    targets = sorted({m for _, m in layers}) if any(o.needs_target_states for o in objectives) else []
    native = any(o.needs_native_logits for o in objectives)
    if config.cache == "none":
        return LiveInputs(A, B, texts, sources, targets, native)
    options = dict(native_logits=native, batch_size=config.batch_size, progress=progress)
    if config.cache == "memory":
        return CachedInputs(cached_activations(None, A, B, texts, sources, targets, **options), A.device, B.device)
    if dist.is_main:
        cached_activations(config.cache, A, B, texts, sources, targets, **options)
    distributed.barrier(dist)
    store = open_store(config.cache, expect=store_identity(A, B, texts, sources, targets, native))
    return CachedInputs(store, A.device, B.device)
