"""The layer pairs of a training run: their adapters (one per pair, or one shared), splices and artifacts.

    >>> pairs = LayerPairs.build(A, B, config, texts, fit=True)
    >>> pairs.keys                 # ["8:8", "16:14", "24:20"]
    >>> pairs.splices[1]           # Splice(A, B, 16, 14, adapter=pair 1's adapter)
    >>> pairs.save("runs/multi", metadata, step=500)   # adapter.safetensors, or pairs/N-M/adapter.safetensors

One pair (the usual run) writes `OUT/adapter.safetensors`; several pairs with `shared_adapter` write the one
adapter there too; several pairs with their own adapters write `OUT/pairs/N-M/adapter.safetensors` each. The
checkpoint holds `group`: the one adapter, or an `AdapterGroup` of the pairs' adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stitch.adapters import Adapter, AdapterGroup, build_adapter, save_adapter
from stitch.adapters.fit import fit_adapter
from stitch.checks import check_layer
from stitch.splice.splice import Splice


@dataclass
class LayerPairs:
    layers: list[tuple[int, int]]
    weights: list[float]
    adapters: list[Adapter]  # per pair (the same object repeated when shared)
    splices: list[Splice]
    shared: bool

    @classmethod
    def build(cls, A, B, config, texts, fit: bool, progress: bool = False) -> LayerPairs:
        layers = [_resolve(A, B, n, m) for n, m in config.pairs()]
        options = config.options()
        count = 1 if config.shared_adapter else len(layers)
        adapters = [_initial(A, B, config, texts, layers[i], fit, progress, options) for i in range(count)]
        if config.shared_adapter:
            adapters = adapters * len(layers)
        splices = [
            Splice(A, B, n, m, adapter=ad, alignment=config.alignment)
            for (n, m), ad in zip(layers, adapters, strict=True)
        ]
        return cls(layers, config.weights(), adapters, splices, config.shared_adapter)

    @property
    def keys(self) -> list[str]:
        return [f"{n}:{m}" for n, m in self.layers]

    @property
    def several(self) -> bool:
        """More than one layer pair: records and files then name their pair ("8:8")."""
        return len(self.layers) > 1

    @property
    def single(self) -> bool:
        return len(self.layers) == 1 or self.shared

    @property
    def group(self) -> Adapter:
        """What a checkpoint holds: the one adapter, or a group of the pairs' adapters."""
        return self.adapters[0] if self.single else AdapterGroup.of(self.adapters)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.group.parameters())

    def save(
        self, out: Path, metadata: dict[str, Any], evals: list[dict] | None = None, **extra: Any
    ) -> list[Path]:
        """Write the adapter(s) of the run under `out` (see the module docstring) with each pair's last
        evaluation in `evals` (in pair order)."""
        evals = evals or [None] * len(self.layers)
        if self.single:
            pairs = {"layer_pairs": self.keys, "eval": evals} if self.several else {"eval": evals[0]}
            return [save_adapter(self.adapters[0], out, **{**metadata, **pairs, **extra})]
        paths = []
        for (n, m), adapter, record in zip(self.layers, self.adapters, evals, strict=True):
            layers = {"source_layer": n, "target_layer": m, "eval": record}
            paths.append(save_adapter(adapter, out / "pairs" / f"{n}-{m}", **{**metadata, **layers, **extra}))
        return paths


def _resolve(A, B, n: int, m: int | None) -> tuple[int, int]:
    n = check_layer("source_layer", n, A.n_layers)
    if m is None:
        return n, check_layer("target_layer (defaults to source_layer)", n, B.n_layers)
    return n, check_layer("target_layer", m, B.n_layers)


def _initial(A, B, config, texts, layers, fit: bool, progress: bool, options) -> Adapter:
    """A pair's adapter before step 0 (no closed-form fit when a checkpoint will overwrite it anyway)."""
    if config.init == "fit" and fit:
        fit_texts = texts[: config.init_texts]  # every rank fits the same texts: no broadcast needed
        fit_options = config.fit_options()  # the adapter's structural options plus init_options (ridge)
        adapter = fit_adapter(A, B, fit_texts, *layers, config.kind, progress=progress, **fit_options)
    else:
        adapter = build_adapter(config.kind, d_source=A.d_model, d_target=B.d_model, **options)
    # on B's side, where the Splice runs it (B's device at layer M, for a sharded B too)
    return adapter.to(device=B.device_of(layers[1]), dtype=torch.float32)
