"""ActivationCache: what `run_with_cache` returns, indexed the TransformerLens way.

>>> logits, cache = A.run_with_cache(batch)
>>> cache["blocks.3.hook_resid_pre"] is cache["resid_pre", 3]
True
>>> cache.accumulated_resid().shape                # [layer, batch, pos, d_model], layers 0..L
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from jaxtyping import Float
from torch import Tensor


class ActivationCache(Mapping):
    """Read-only mapping from hook names to tensors, also keyed by `("resid_pre", i)` / `("resid_post", i)`."""

    def __init__(self, cache: dict[str, Tensor], n_layers: int):
        self.cache_dict = dict(cache)
        self.n_layers = n_layers

    def _key(self, key) -> str:
        if isinstance(key, tuple):
            kind, block = key
            if block < 0:
                block += self.n_layers
            return f"blocks.{block}.hook_{kind}"
        return key

    def __getitem__(self, key) -> Tensor:
        name = self._key(key)
        if name not in self.cache_dict:
            raise KeyError(f"key: {key!r} is not in the cache; cached hook points: {sorted(self.cache_dict)}")
        return self.cache_dict[name]

    def __iter__(self):
        return iter(self.cache_dict)

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} hook points: {list(self.cache_dict)[:4]}...)"

    def to(self, device) -> ActivationCache:
        return ActivationCache({k: v.to(device) for k, v in self.cache_dict.items()}, self.n_layers)

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch dimension of a batch-of-one cache, as TransformerLens's method does."""
        sizes = {v.shape[0] for v in self.cache_dict.values()}
        if sizes != {1}:
            raise ValueError(f"remove_batch_dim: needs a batch of one, got batch sizes {sorted(sizes)}")
        return ActivationCache({k: v[0] for k, v in self.cache_dict.items()}, self.n_layers)

    def stack_activation(self, kind: str) -> Float[Tensor, "layer batch pos d_model"]:
        """`kind` ("resid_pre" or "resid_post") of every block, stacked along a new first dimension."""
        return torch.stack([self[(kind, i)] for i in range(self.n_layers)])

    def accumulated_resid(self) -> Float[Tensor, "layer batch pos d_model"]:
        """The residual stream at layers 0..L stacked (needs every resid_pre and the last resid_post)."""
        layers = [self[("resid_pre", i)] for i in range(self.n_layers)]
        return torch.stack([*layers, self[("resid_post", self.n_layers - 1)]])
