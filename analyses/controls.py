"""Controls for layer similarity: the same analysis on models that share the architecture but not the training.

    >>> from analyses.controls import control_models
    >>> A0, B0 = control_models("random-init", A, B, seed=0)   # A's and B's configs, fresh random weights
    >>> layer_similarity(A, B, texts, control="random-init").control   # the same matrix on A0, B0

A permutation null asks whether the pairing of samples matters at all, and any structure beats it: two
untrained models of the same architectures do, in every cell, because the token embeddings and the
shape of the residual stream already make states of the same text alike. The random-init control asks
the question that matters — how much more alike are the trained models than their untrained selves —
with the same tokenizers, texts and pairing, so only the weights differ.
"""

from __future__ import annotations

from collections.abc import Callable

from stitch.models import HookedLM, random_init
from stitch.registry import Registry

ControlFn = Callable[[HookedLM, HookedLM, int], tuple[HookedLM, HookedLM]]


def random_init_pair(A: HookedLM, B: HookedLM, seed: int) -> tuple[HookedLM, HookedLM]:
    """A and B rebuilt from their configs with random weights (seeds `seed` and `seed + 1`).

    Distinct seeds even when B is A: the control of a model against itself is two untrained models of
    its architecture, not one untrained model against itself (which would be 1 on the diagonal).
    """
    return random_init(A, seed=seed), random_init(B, seed=seed + 1)


CONTROLS: Registry[ControlFn] = Registry("control", {"random-init": random_init_pair})


def check_control(control: str, seed: int) -> None:
    """Refuse an unknown control or a bad seed before any model runs."""
    CONTROLS.lookup(control)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: got {seed!r}; valid: an integer >= 0")


def control_models(control: str, A: HookedLM, B: HookedLM, seed: int = 0) -> tuple[HookedLM, HookedLM]:
    """The control pair of models named `control` (one of `CONTROLS`) for the pair (A, B)."""
    check_control(control, seed)
    return CONTROLS[control](A, B, seed)
