"""Run A and B once over texts and keep what training, fits and CKA read: an `ActivationStore`.

    >>> store = collect_activations(A, B, texts, source_layers=[8], target_layers=[8])        # in memory
    >>> store = collect_activations(A, B, texts, [8], [8], path="runs/cache", shard_texts=512)  # on disk
    >>> store = cached_activations("runs/cache", A, B, texts, [8], [8])    # reuse if it matches, else build

A runs blocks [0, max N) per batch and B blocks [0, max M) (`stitch.models.states.model_states`); with
`native_logits` B runs in full and its logits are kept too (vocab-sized per token: for the `kl` objective).
Texts are paired exactly as `stitch.alignment.pairing.pair_texts` pairs them, with right padding.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from stitch.activations.store import (
    FORMAT,
    MANIFEST,
    ActivationStore,
    open_store,
    store_identity,
    unpad,
    write_manifest,
    write_shard,
)
from stitch.alignment.pairing import pair_texts
from stitch.checks import check_layer, check_texts
from stitch.models.states import model_states


@torch.no_grad()
def collect_activations(
    A,
    B,
    texts: Sequence[str],
    source_layers: Sequence[int],
    target_layers: Sequence[int] = (),
    *,
    native_logits: bool = False,
    path: str | os.PathLike | None = None,
    batch_size: int = 8,
    shard_texts: int = 1024,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> ActivationStore:
    """A store of `texts`: pairings, A's states at `source_layers`, B's at `target_layers` (see module doc).

    `dtype` casts the stored states (default: as the models compute them). With `path`, shards of
    `shard_texts` texts are written as they fill and the manifest last.
    """
    texts = check_texts(texts)
    sources = sorted({check_layer("source_layers", n, A.n_layers) for n in source_layers})
    targets = sorted({check_layer("target_layers", m, B.n_layers) for m in target_layers})
    if not sources:
        raise ValueError("source_layers: expected at least one layer of A, got none")
    manifest = {
        **store_identity(A, B, texts, sources, targets, native_logits),
        "format": FORMAT,
        "n_texts": len(texts),
        "pad_ids": {"source": A.pad_token_id, "target": B.pad_token_id},
        "shards": [],
    }
    directory = None if path is None else Path(path)
    rows, pending = [], []
    for start in tqdm(range(0, len(texts), batch_size), desc="caching activations", disable=not progress):
        pending.extend(_rows(A, B, texts[start : start + batch_size], sources, targets, native_logits, dtype))
        if directory is not None and len(pending) >= shard_texts:
            manifest["shards"].append(write_shard(directory, len(manifest["shards"]), pending[:shard_texts]))
            pending = pending[shard_texts:]
        elif directory is None:
            rows, pending = rows + pending, []
    if directory is None:
        return ActivationStore(manifest, rows, list(texts))
    if pending:
        manifest["shards"].append(write_shard(directory, len(manifest["shards"]), pending))
    write_manifest(directory, manifest, list(texts))
    return open_store(directory)


def cached_activations(path, A, B, texts, source_layers, target_layers=(), **options) -> ActivationStore:
    """The store at `path` if it was built for exactly this (models, texts, layers), else a new one there.

    A store built for other models, texts or pairing is refused (`StaleStoreError`) rather than
    overwritten: the reason is in the message, and removing the directory rebuilds it.
    """
    expected = store_identity(A, B, texts, source_layers, target_layers, options.get("native_logits", False))
    if path is not None and (Path(path) / MANIFEST).is_file():
        return open_store(path, expect=expected)
    return collect_activations(A, B, texts, source_layers, target_layers, path=path, **options)


def _rows(A, B, texts, sources, targets, native_logits: bool, dtype) -> list:
    pairing = pair_texts(A, B, texts, padding_side="right")
    source = model_states(A, pairing.source, set(sources))
    target = model_states(B, pairing.target, set(targets)) if targets else {}
    logits = B.logits(pairing.target) if native_logits else None
    if dtype is not None:
        source = {k: v.to(dtype) for k, v in source.items()}
        target = {k: v.to(dtype) for k, v in target.items()}
    return unpad(pairing, source, target, logits)
