"""Representation probes at each evaluation: how close the adapter's image of A is to B's own states.

    >>> probe = PairProbe.collect(A, B, eval_texts, source_layer=8, target_layer=8)
    >>> probe.record(adapter, cka=analyses.cka.linear_cka)
    {"cosine_before": 0.12, "cosine_after": 0.91, "cka_before": 0.55, "cka_after": 0.83, "probe_pairs": 2048}

On the pairs of the held-out texts (`Pairing.pairs`, at most `limit` of them, collected once): the mean
cosine of A's state (before; only when the widths agree) or the adapter's image of it (after) with B's own
layer-M state, and a CKA given by the caller (the core does not import `analyses`; `stitch train` passes
`analyses.cka.linear_cka`). CKA before is the adapter-free similarity of the two layers.
"""

from __future__ import annotations

from collections.abc import Callable
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
    @torch.no_grad()
    def collect(cls, A, B, texts, source_layer: int, target_layer: int, limit: int = 2048,
                cka: Similarity | None = None) -> PairProbe:  # fmt: skip
        store = collect_activations(A, B, texts, [source_layer], [target_layer])
        x, y = store.paired(source_layer, target_layer)
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
