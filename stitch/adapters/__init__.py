"""Adapters: the only thing stitch learns. Each maps `[..., d_source]` to `[..., d_target]`.

>>> from stitch import adapters
>>> ad = adapters.Procrustes.fit(x, y)                    # closed form, one SVD
>>> ad = adapters.Affine.fit(x, y, ridge=1e-3)            # ridge least squares (ridge relative to x's variance)
>>> stats = adapters.SufficientStats()                    # streamed, O(d²) memory
>>> for xs, ys in pairs: stats.update(xs, ys)
>>> ad = adapters.Procrustes.fit_stats(stats)
>>> ad = adapters.build_adapter("lowrank", d_source=3072, d_target=4096, rank=64)
>>> adapters.save_adapter(ad, "out/adapter.safetensors", source_layer=16)
>>> adapters.load_adapter("out/adapter.safetensors")
>>> ad = adapters.TokenConditioned(3072, 4096, window=2)   # also reads B's embeddings since the last shared boundary
"""

from stitch.adapters.base import ADAPTERS, Adapter, adapter_class, build_adapter, register_adapter
from stitch.adapters.closed_form import (
    SufficientStats,
    ridge_penalty,
    solve_least_squares,
    solve_procrustes,
)
from stitch.adapters.conditioned import (
    TokenConditioned,
    TokenConditionedMLP,
    condition_features,
    is_conditioned,
)
from stitch.adapters.group import AdapterGroup
from stitch.adapters.io import load_adapter, read_adapter_record, save_adapter
from stitch.adapters.linear import (
    CLOSED_FORM,
    Affine,
    Identity,
    Linear,
    Procrustes,
    Projection,
    fit_closed_form,
)
from stitch.adapters.nonlinear import MLP, LowRank

__all__ = [
    "ADAPTERS",
    "CLOSED_FORM",
    "MLP",
    "Adapter",
    "AdapterGroup",
    "Affine",
    "Identity",
    "Linear",
    "LowRank",
    "Procrustes",
    "Projection",
    "SufficientStats",
    "TokenConditioned",
    "TokenConditionedMLP",
    "adapter_class",
    "build_adapter",
    "condition_features",
    "fit_closed_form",
    "is_conditioned",
    "load_adapter",
    "read_adapter_record",
    "register_adapter",
    "ridge_penalty",
    "save_adapter",
    "solve_least_squares",
    "solve_procrustes",
]
