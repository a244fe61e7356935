"""The adapter base class and the registry of adapter kinds by name.

    >>> from stitch.adapters import build_adapter, ADAPTERS
    >>> ad = build_adapter("affine", d_source=3072, d_target=4096)
    >>> sorted(ADAPTERS)                      # ['affine', 'identity', 'linear', ...]
    >>> ad.kind, ad.d_source, ad.d_target, ad.n_parameters()

Every adapter is an `nn.Module` mapping `[..., d_source]` to `[..., d_target]`; `config()` returns the
constructor arguments, so `build_adapter(ad.kind, **ad.config())` rebuilds the same architecture.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor, nn

from stitch.registry import Registry

ADAPTERS: Registry[type[Adapter]] = Registry("adapter kind", key="kind")
register_adapter = ADAPTERS.register  # class decorator: `cls` is buildable (and loadable from disk) by its `kind`


def adapter_class(kind: str) -> type[Adapter]:
    """The adapter class registered as `kind` (case-insensitive); unknown kinds list the valid ones."""
    if not isinstance(kind, str) or kind.lower() not in ADAPTERS:
        raise ValueError(f"unknown adapter kind {kind!r}; valid kinds: {sorted(ADAPTERS)}")
    return ADAPTERS[kind.lower()]


def build_adapter(kind: str, **config: Any) -> Adapter:
    """A fresh adapter of `kind` built from its `config()` dict."""
    return adapter_class(kind)(**config)


def check_width(name: str, value: Any, allow_none: bool = False) -> int | None:
    """A positive integer width (or None when allowed); bools and floats are refused."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class Adapter(nn.Module):
    """Base of every adapter: widths, kind, config, parameter count, and input checks.

        >>> class Scale(Adapter):
        ...     kind = "scale"
        ...     def _map(self, x): return 2 * x

    Subclasses implement `_map` on inputs already checked for width and cast to the adapter's dtype;
    the output is cast back to the input's dtype, so a float32 adapter can serve a bfloat16 model.
    """

    kind: ClassVar[str] = "adapter"

    def __init__(self, d_source: int | None, d_target: int | None):
        super().__init__()
        self.d_source = d_source
        self.d_target = d_target

    def config(self) -> dict[str, Any]:
        """Constructor arguments: `build_adapter(self.kind, **self.config())` rebuilds this architecture."""
        return {"d_source": self.d_source, "d_target": self.d_target}

    def n_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalar parameters (optionally only those with `requires_grad`)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def extra_repr(self) -> str:
        return f"d_source={self.d_source}, d_target={self.d_target}, n_parameters={self.n_parameters()}"

    def forward(self, x: Float[Tensor, "... d_source"]) -> Float[Tensor, "... d_target"]:
        self._check_input(x)
        dtype = self._compute_dtype()
        if dtype is None or x.dtype == dtype:
            return self._map(x)
        return self._map(x.to(dtype)).to(x.dtype)

    def _map(self, x: Float[Tensor, "... d_source"]) -> Float[Tensor, "... d_target"]:
        raise NotImplementedError

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{self.kind} adapter input must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim == 0 or (self.d_source is not None and x.shape[-1] != self.d_source):
            raise ValueError(
                f"{self.kind} adapter expects input [..., d_source={self.d_source}], "
                f"got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"{self.kind} adapter input must be floating point, got {x.dtype}")

    def _compute_dtype(self) -> torch.dtype | None:
        first = next(self.parameters(), None)
        return None if first is None else first.dtype


def eye_init(d_target: int, d_source: int) -> Tensor:
    """The [d_target, d_source] identity (truncated or zero-padded): a map that starts as 'copy dims'."""
    return torch.eye(d_target, d_source)
