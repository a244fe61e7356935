"""States of one model at some layers: integer layers of the residual stream, and its input embeddings.

    >>> states = model_states(B, batch, {4, EMBEDDINGS})
    >>> states[4].shape, states[EMBEDDINGS].shape      # [batch, pos, d_model] each

`EMBEDDINGS` is a typed layer of its own, not layer 0: it is what the HF model's input-embedding module
returns (before any scaling a family applies, e.g. Gemma's √d), i.e. what `inputs_embeds` takes.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from stitch.batch import Batch


class Embeddings:
    """The input embeddings as a layer: the state `inputs_embeds` replaces (one instance, `EMBEDDINGS`)."""

    _instance: Embeddings | None = None

    def __new__(cls) -> Embeddings:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "EMBEDDINGS"

    def __reduce__(self):
        return (Embeddings, ())


EMBEDDINGS = Embeddings()
Layer = "int | Embeddings"


def is_embeddings(layer) -> bool:
    return layer is EMBEDDINGS


@torch.no_grad()
def model_states(model, batch: Batch, layers) -> dict:
    """{layer: [batch, pos, d_model]} for integer layers, plus the input embeddings for `EMBEDDINGS`.

    The model runs once, up to its deepest requested integer layer.
    """
    out: dict = {}
    ints = sorted(layer for layer in layers if not is_embeddings(layer))
    if ints:
        out.update(model.residuals(batch, ints))
    if any(is_embeddings(layer) for layer in layers):
        out[EMBEDDINGS] = input_embeddings(model, batch)
    return out


def input_embeddings(model, batch: Batch) -> Float[Tensor, "batch pos d_model"]:
    """What the HF model's embedding module gives for the batch's ids: the state `inputs_embeds` replaces."""
    return model.model.get_input_embeddings()(batch.input_ids)
