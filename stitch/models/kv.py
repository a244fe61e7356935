"""KV caches for partial forwards: stitch, not Hugging Face, owns every slot's position and visibility.

    >>> kv = KVCache.empty(B, batch_size=2)
    >>> step = Step(ids, positions, valid)                 # [batch, q] each: the tokens this forward adds
    >>> logits = B.forward_cached(kv, step, start=M, hooks=[...])   # blocks [M, L) only, cached
    >>> kv.forget(from_position)                           # later slots of each row stop being attended to

Why stitch owns it. With blocks skipped, HF sizes its masks from the first cache layer, which a splice at
M > 0 never fills: the cache length reads 0 and the next step's mask and positions are off. So every forward
passes explicit `position_ids` and a 4D mask built here from the logical position of each cache slot.

Slots. The cache grows by one slot per query token of every step, in every row. A slot is attended to when it
is valid and its position is at most the query's (and, on sliding-window layers, closer than the window).
Rows that add fewer tokens than others in one step pad with invalid slots; a token whose state must be
recomputed (A re-tokenized its tail, B is fed a new A state) is forgotten and re-added as a new slot at its
old position. Invalid slots are never read, so the cache is exact; it only grows by the padding and the
recomputed tokens, both bounded per step, so work stays linear in the number of new tokens.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from transformers import DynamicCache


@dataclass(frozen=True)
class Step:
    """The tokens one cached forward adds: ids (None when embeddings are fed), logical positions, validity."""

    input_ids: Int[Tensor, "batch q"] | None
    positions: Int[Tensor, "batch q"]
    valid: Bool[Tensor, "batch q"]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.positions.shape)


class KVCache:
    """A `transformers.DynamicCache` plus, per row and slot, the logical position and whether it is visible."""

    def __init__(self, windows: dict[str, int | None], batch_size: int, device, dtype: torch.dtype):
        self.cache = DynamicCache()  # plain layers everywhere: sliding windows are applied by the mask
        self.windows = windows
        # Slot positions and visibility live in buffers that double when full (issue 11): concatenating
        # them every step made each step's bookkeeping O(slots). `positions`/`valid` are views of them.
        self._positions = torch.zeros(batch_size, 64, dtype=torch.long, device=device)
        self._valid = torch.zeros(batch_size, 64, dtype=torch.bool, device=device)
        self._n = 0
        self.dtype = dtype

    @classmethod
    def empty(cls, model, batch_size: int) -> KVCache:
        """An empty cache for a HookedLM `model` and `batch_size` rows."""
        return cls(attention_windows(model.model.config), batch_size, model.device, model.dtype)

    @property
    def positions(self) -> Tensor:
        return self._positions[:, : self._n]

    @property
    def valid(self) -> Tensor:
        return self._valid[:, : self._n]

    def mask(self, step: Step) -> Tensor | dict[str, Tensor]:
        """The additive 4D mask `[batch, 1, q, slots + q]` of `step` (a dict by layer type for hybrid models)."""
        end = self._stage(step)  # the step's slots written after the cache's own, not yet committed
        key_pos, key_ok = self._positions[:, None, :end], self._valid[:, None, :end]
        query_pos = step.positions[:, :, None]
        allowed = key_ok & (key_pos <= query_pos)
        distance = query_pos - key_pos if any(w is not None for w in self.windows.values()) else None
        masks = {kind: _additive(_windowed(allowed, distance, w), self.dtype) for kind, w in self.windows.items()}
        return masks["full_attention"] if len(masks) == 1 else masks

    def commit(self, step: Step) -> None:
        """Record the slots `step` appended (called after its forward has written their keys and values)."""
        self._n = self._stage(step)

    def forget(self, from_position: Int[Tensor, " batch"]) -> None:
        """Stop attending to every slot of row b at position >= from_position[b] (their states are stale)."""
        self.valid.logical_and_(self.positions < from_position[:, None])

    def _stage(self, step: Step) -> int:
        """Write `step`'s positions and validity into the slots after the committed ones; their end."""
        end = self._n + step.shape[1]
        if end > self._positions.shape[1]:
            size = max(end, 2 * self._positions.shape[1])
            for name in ("_positions", "_valid"):
                old = getattr(self, name)
                grown = old.new_zeros(old.shape[0], size)
                grown[:, : self._n] = old[:, : self._n]
                setattr(self, name, grown)
        self._positions[:, self._n : end] = step.positions
        self._valid[:, self._n : end] = step.valid
        return end


def cache_keyword(model) -> str:
    """The forward argument a HF model takes its cache by: `cache` (transformers >= 5.2x) or `past_key_values`."""
    return _cache_keyword(type(model))


@functools.cache
def _cache_keyword(cls) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def attention_windows(config) -> dict[str, int | None]:
    """The attention window of each layer type HF's masks distinguish (None: full causal attention)."""
    types = set(getattr(config, "layer_types", None) or ())
    window = getattr(config, "sliding_window", None)
    if "sliding_attention" in types:
        return {"full_attention": None, "sliding_attention": window}
    return {"full_attention": window}  # Mistral-style: one mask, windowed when the config sets a window


def _windowed(allowed: Tensor, distance: Tensor, window: int | None) -> Tensor:
    # HF's sliding layers let a query see keys fewer than `window` positions back.
    return allowed if window is None else allowed & (distance < window)


def _additive(allowed: Bool[Tensor, "batch q k"], dtype: torch.dtype) -> Tensor:
    # A large finite negative, not -inf: a padding query that sees nothing softmaxes to uniform, never NaN.
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed[:, None], zero, torch.finfo(dtype).min)
