"""Input checks shared by every similarity measure: finite float64 `[n, d]` samples, paired by n.

>>> x = as_samples(acts, "x")            # ValueError naming "x" for NaN, wrong ndim, n too small
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

# CKA of n <= 2 samples is 1 whatever they are (two centred points span one line); the debiased
# estimator divides by n(n - 3)
_WHY_MIN_N = {
    3: " (CKA of 2 samples is trivially 1: their centred states are one line on both sides)",
    4: " for the debiased (unbiased HSIC) estimator",
}


def as_samples(x, name: str, *, min_n: int = 2, allow_constant: bool = False) -> Float[Tensor, "n d"]:
    """`x` as a finite float64 [n, d] tensor with n >= `min_n`, else a ValueError naming `name`."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name}: expected a tensor or array [n, d], got {type(x).__name__}") from err
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name}: expected real numbers, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(
            f"{name}: expected a 2-D [n, d] tensor (samples x features, d >= 1), got shape {tuple(x.shape)}"
        )
    if x.shape[0] < min_n:
        raise ValueError(f"{name}: {x.shape[0]} samples; need n >= {min_n}{_WHY_MIN_N.get(min_n, '')}")
    x = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x.sum(0)).all()):  # cheap screen: any NaN/inf makes its column sum non-finite
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name}: {n_bad} non-finite values (NaN or inf), or sums overflowing float64; "
            "similarity needs finite inputs"
        )
    if not allow_constant and torch.equal(x, x[:1].expand_as(x)):  # stops at the first differing value
        raise ValueError(
            f"{name}: constant representation (all {x.shape[0]} samples identical); similarity is undefined"
        )
    return x


def as_layers(xs, name: str, **checks) -> list[Tensor]:
    """A list of [n, d] tensors (one per layer) from a list/tuple or a stacked [layer, n, d] tensor."""
    if isinstance(xs, Tensor) and xs.ndim == 3:
        xs = list(xs.unbind(0))
    if not isinstance(xs, list | tuple) or len(xs) == 0:
        raise TypeError(
            f"{name}: expected a non-empty list of [n, d] tensors (one per layer), got {type(xs).__name__}"
        )
    return [as_samples(x, label(name, i), **checks) for i, x in enumerate(xs)]


def label(name: str, i: int) -> str:
    # linear_cka(x, y) reports "x"/"y"; layer lists report "xs[3]".
    return name if name in ("x", "y") else f"{name}[{i}]"


def check_pairing(mats_x: list[Tensor], mats_y: list[Tensor], names: tuple[str, str]) -> None:
    """Rows pair up: every layer of both sides has the same number of samples n."""
    n = mats_x[0].shape[0]
    for name, mats in zip(names, (mats_x, mats_y), strict=True):
        for i, m in enumerate(mats):
            if m.shape[0] != n:
                raise ValueError(
                    f"{label(name, i)}: {m.shape[0]} samples, but {label(names[0], 0)} has {n}; rows must pair the "
                    "same samples (mismatched n)"
                )
