"""Representation probes at each evaluation: how close the adapter's image of A is to B's own states.

    >>> probes = PairProbe.collect_all(A, B, eval_texts, [(8, 8), (12, 16)])   # one pass of A and B
    >>> probes[0].record(adapter, cka=analyses.cka.linear_cka)
    {"cosine_before": 0.12, "cosine_after": 0.91, "cka_before": 0.55, "cka_after": 0.83, "probe_pairs": 2048}
    >>> probe = PairProbe.collect(A, B, eval_texts, source_layer=8, target_layer=8)  # one pair

On the pairs of the held-out texts (`Pairing.pairs`, at most `limit` of them, collected once): the mean
cosine of A's state (before; only when the widths agree) or the adapter's image of it (after) with B's own
layer-M state, and a CKA given by the caller (the core does not import `analyses`; `stitch train` passes
`analyses.cka.linear_cka`). CKA before is the adapter-free similarity of the two layers.

A run's pairs share one activation store (`collect_activations` with every pair's layers): A and B run
once over the texts, not once per pair, and each pair's probe is the same tensors a store of its own two
layers would give.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from stitch.activations.collect import collect_activations

Similarity = Callable[[Tensor, Tensor], float]


@dataclass
class PairProbe:
    x: Tensor
    y: Tensor
    before: dict[str, float] = field(default_factory=dict)

    @classmethod
    def collect(cls, A, B, texts, source_layer: int, target_layer: int, limit: int = 2048,
                cka: Similarity | None = None) -> PairProbe:  # fmt: skip
        """The probe of one pair: `collect_all` with that pair alone."""
        return cls.collect_all(A, B, texts, [(source_layer, target_layer)], limit, cka)[0]

    @classmethod
    @torch.no_grad()
    def collect_all(cls, A, B, texts, layers: Sequence[tuple[int, int]], limit: int = 2048,
                    cka: Similarity | None = None) -> list[PairProbe]:  # fmt: skip
        """One probe per (source_layer, target_layer) of `layers`, in order, from one pass of A and B."""
        layers = list(layers)
        store = collect_activations(A, B, texts, [n for n, _ in layers], [m for _, m in layers])
        return [cls._from_pairs(*store.paired(n, m), limit, cka) for n, m in layers]

    @classmethod
    def _from_pairs(cls, x: Tensor, y: Tensor, limit: int, cka: Similarity | None) -> PairProbe:
        x, y = x[:limit].float(), y[:limit].float()
        before = {"cosine_before": _cosine(x, y) if x.shape[-1] == y.shape[-1] else None}
        if cka is not None:
            before["cka_before"] = float(cka(x.double(), y.double()))
        return cls(x, y, before)

    @torch.no_grad()
    def record(self, adapter, cka: Similarity | None = None) -> dict[str, float]:
        mapped = adapter(self.x.to(next(adapter.parameters(), self.x).device)).float().cpu()
        out = {**self.before, "cosine_after": _cosine(mapped, self.y), "probe_pairs": int(self.x.shape[0])}
        if cka is not None:
            out["cka_after"] = float(cka(mapped.double(), self.y.double()))
        return out


def _cosine(x: Tensor, y: Tensor) -> float:
    return float(F.cosine_similarity(x, y, dim=-1).mean())
