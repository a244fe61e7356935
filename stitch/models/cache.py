"""ActivationCache: what `run_with_cache` returns, indexed the TransformerLens way.

>>> logits, cache = A.run_with_cache(batch)
>>> cache["blocks.3.hook_resid_pre"] is cache["resid_pre", 3]
True
>>> cache.accumulated_resid().shape                # [layer, batch, pos, d_model], layers 0..L
>>> cache.accumulated_resid(layer=2, pos_slice=-1, return_labels=True)   # TransformerLens's arguments

Keys are hook names in forward order (`stitch.models.hooks.hook_names`); tensors are detached.
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

    def to(self, device, move_model: bool | None = None) -> ActivationCache:
        """The cache on `device` (TransformerLens's `move_model` is refused: the cache holds no model)."""
        if move_model:
            raise ValueError("move_model: not supported; a stitch cache holds no model (move it with A.model.to)")
        return ActivationCache({k: v.to(device) for k, v in self.cache_dict.items()}, self.n_layers)

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch dimension of a batch-of-one cache, as TransformerLens's method does."""
        sizes = {v.shape[0] for v in self.cache_dict.values()}
        if sizes != {1}:
            raise ValueError(f"remove_batch_dim: needs a batch of one, got batch sizes {sorted(sizes)}")
        return ActivationCache({k: v[0] for k, v in self.cache_dict.items()}, self.n_layers)

    def stack_activation(
        self, activation_name: str, layer: int = -1, sublayer_type: str | None = None
    ) -> Float[Tensor, "layer batch pos d_model"]:
        """`activation_name` ("resid_pre" or "resid_post") of blocks [0, layer) (layer=-1: every block),
        stacked along a new first dimension (TransformerLens's signature)."""
        if sublayer_type is not None:
            raise ValueError(f"sublayer_type: {sublayer_type!r} is not supported; a stitch cache holds the residual stream only")
        stop = self.n_layers if layer == -1 else layer
        return torch.stack([self[(activation_name, i)] for i in range(stop)])

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice=None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ):
        """The residual stream at layers 0..`layer` (default: 0..L, L the output of the last block) stacked,
        `[layer, batch, pos, d_model]` (TransformerLens's signature; `return_labels=True`: also the labels).

        `incl_mid`, `apply_ln` and `mlp_input` are refused: the cache holds no mid-block stream and no norm."""
        for name, value in (("incl_mid", incl_mid), ("apply_ln", apply_ln), ("mlp_input", mlp_input)):
            if value:
                raise ValueError(f"{name}: not supported; a stitch cache holds resid_pre / resid_post only")
        stop = self.n_layers if layer is None else layer
        if not 0 <= stop <= self.n_layers:
            raise ValueError(f"layer: expected 0..{self.n_layers}, got {layer}")
        streams = [self[("resid_pre", i)] if i < self.n_layers else self[("resid_post", i - 1)] for i in range(stop + 1)]
        stacked = torch.stack(streams)
        if pos_slice is not None:
            stacked = stacked[..., _position_index(pos_slice), :]
        labels = [f"{i}_pre" if i < self.n_layers else "final_post" for i in range(stop + 1)]
        return (stacked, labels) if return_labels else stacked

    def __getattr__(self, name: str):
        if name in _UNSUPPORTED:  # TransformerLens methods that need more than the residual stream
            raise AttributeError(
                f"ActivationCache.{name}: not supported; a stitch cache holds the residual stream only "
                f"(resid_pre / resid_post / ln_final.hook_in), not attention, MLP or head outputs"
            )
        raise AttributeError(f"'ActivationCache' object has no attribute {name!r}")


_UNSUPPORTED = frozenset({
    "decompose_resid", "get_full_resid_decomposition", "compute_head_results", "stack_head_results",
    "stack_neuron_results", "get_neuron_results", "logit_attrs", "apply_ln_to_stack", "apply_slice_to_batch_dim",
    "toggle_autodiff",
})  # fmt: skip


def _position_index(pos_slice):
    """TransformerLens's `Slice` on the position dimension: an int drops it, a tuple is `slice(*t)`, a list
    or tensor picks those positions, a slice is itself."""
    if isinstance(pos_slice, tuple):
        return slice(*pos_slice)
    if isinstance(pos_slice, (list, Tensor)):
        return torch.as_tensor(pos_slice, dtype=torch.long)
    if isinstance(pos_slice, (int, slice)):
        return pos_slice
    raise ValueError(f"pos_slice: expected an int, tuple, slice, list or tensor of positions, got {pos_slice!r}")
