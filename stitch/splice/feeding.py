"""Incremental state of cached generation: growing per-row buffers and the feeding of B's positions.

    >>> store = Growing(d=256, device="cpu", dtype=torch.float32)
    >>> store.write(first=5, new)              # rows 5.. replaced by `new` ([k, d]); earlier rows kept
    >>> store.view()                           # [n, d]: no copy of the kept rows (capacity doubles)
    >>> frontier = update_feeding(feed, a_ends, a_special, b_ends, b_special, first_a)

Why. Each generation step adds a token or two; concatenating a row's whole history (states, feeding
indices) every step is O(T) work per step, which the cost benchmark sees as per-token time that grows with
the length. These keep every step's work proportional to what changed.

The feeding rule (`align_spans`): B position j is fed by the last A token whose (end, rank among tokens with
that end) key is at most j's. When A re-tokenized from token `first_a` on, let a0 be the start of the run of
equal ends holding token `first_a - 1` (so every A token before a0 ends strictly before every token from a0
on, old or new), and j0 the first B position ending after token a0 - 1. B positions before j0 end no later
than token a0 - 1, so they are fed by unchanged tokens before a0 exactly as before; from j0 on the rule runs on
the tails alone (A tokens a0.., B positions j0..), whose keys are those of the full run, and a position no
tail token reaches is fed by token a0 - 1. `tests/test_generation_feeding.py` checks this against the full
alignment on random growths.
"""

from __future__ import annotations

import bisect

import torch
from torch import Tensor


class Growing:
    """A `[n, d]` tensor that is rewritten from some row on and grows at the end, in amortised O(new)."""

    def __init__(self, d: int, device, dtype: torch.dtype, capacity: int = 64):
        self.buffer = torch.zeros(capacity, d, device=device, dtype=dtype)
        self.n = 0

    def write(self, first: int, new: Tensor) -> None:
        """Keep rows [0, first), replace the rest by `new`."""
        end = first + new.shape[0]
        if end > self.buffer.shape[0]:
            grown = self.buffer.new_zeros(max(end, 2 * self.buffer.shape[0]), self.buffer.shape[1])
            grown[: self.n] = self.buffer[: self.n]
            self.buffer = grown
        self.buffer[first:end] = new.to(self.buffer.dtype)
        self.n = end

    def view(self) -> Tensor:
        return self.buffer[: self.n]

    def __len__(self) -> int:
        return self.n


def update_feeding(feed: list[int], a_ends, a_special, b_ends, b_special, first_a: int, device) -> int:
    """Bring `feed` (B position -> feeding A token, -1: none) up to date in place; the first B position
    whose entry was recomputed (see the module docstring for why the earlier ones cannot change)."""
    a0 = min(first_a, len(a_ends))
    if a0 > 0:
        a0 = bisect.bisect_left(a_ends, a_ends[a0 - 1], 0, a0)  # start of the run holding token a0 - 1
    j0 = bisect.bisect_right(b_ends, a_ends[a0 - 1]) if a0 > 0 else 0
    j0 = min(j0, len(feed))
    if j0 < len(b_ends):
        tail = tail_feeding(a_ends[a0:], a_special[a0:], b_ends[j0:], b_special[j0:], device)
        feed[j0:] = [t + a0 if t >= 0 else a0 - 1 for t in tail]
    else:
        del feed[len(b_ends) :]
    return j0


def tail_feeding(a_ends, a_special, b_ends, b_special, device=None) -> list[int]:
    """`align_spans`'s feeding of B positions by A tokens of one row, both given by their byte ends (each
    list starting a run of equal ends): B position j gets the last A token whose (end, rank among equal ends)
    key is at most j's, -1 if none. Plain Python: the tails are a few tokens, where tensor ops cost more."""
    a_keys = _keys(a_ends)
    return [bisect.bisect_right(a_keys, key) - 1 for key in _keys(b_ends)]


def _keys(ends) -> list[tuple[int, int]]:
    keys, rank = [], 0
    for i, e in enumerate(ends):
        rank = rank + 1 if i and e == ends[i - 1] else 0
        keys.append((e, rank))
    return keys
