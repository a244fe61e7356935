"""Argument checks whose errors name the parameter, the value and the valid range."""

from __future__ import annotations

from collections.abc import Sequence


def check_layer(name: str, value, n_layers: int) -> int:
    """An integer layer ℓ ∈ [0, n_layers]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name}: expected an integer layer in [0, {n_layers}], got {value!r} ({type(value).__name__})"
        )
    if not 0 <= value <= n_layers:
        raise ValueError(
            f"{name}: layer {value} is out of range; valid layers are 0..{n_layers} "
            f"(0 = embeddings, {n_layers} = output of the last block, before the final norm)"
        )
    return value


def check_texts(texts) -> list[str]:
    """A non-empty list of non-empty strings (a single string becomes a list of one)."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) or len(texts) == 0:
        got = repr(texts) if isinstance(texts, Sequence) else type(texts).__name__
        raise ValueError(f"texts: expected a non-empty list of strings, got {got}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}]: expected a string, got {type(text).__name__}")
        if text == "":
            raise ValueError(f"texts[{i}]: empty string; every text needs at least one character")
    return list(texts)


def check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{name}: {value!r} is not one of {list(choices)}")
