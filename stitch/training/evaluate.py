"""Held-out evaluation during training: the one evaluator (`stitch.splice.score`) on the training splice.

    >>> refs = eval_references(sp, train_texts, dist, batch_size=8)      # unigram + mean state, from training
    >>> refs = eval_references(pairs.splices, train_texts, dist, 8)      # every pair's, in one pass of B
    >>> evaluate(sp, eval_texts, dist, batch_size=8, references=refs)["loss_recovered"]
    >>> evaluate_splices(pairs.splices, eval_texts, dist, 8, refs)       # every pair, one pass of A and B

The record is flat for `metrics.jsonl`: the headline class's values (shared positions, relative to the
context-free reference) at the top level, every class under "classes"; NaN is written as null.
"""

from __future__ import annotations

import torch

from stitch.splice.score import References, score_splices
from stitch.splice.splice import Splice
from stitch.training import distributed


@torch.no_grad()
def eval_references(splices, train_texts: list[str], dist: distributed.Dist, batch_size: int) -> References:
    """The references of a splice, or of every splice of a run, estimated on the training texts.

    One pass of B over the texts (each rank reads its share) gives every splice's write point: a run
    training several layer pairs shares one `References` rather than running B once per pair.
    """
    splices = [splices] if isinstance(splices, Splice) else list(splices)
    first = splices[0]
    return References.build(
        first.A, first.B, train_texts, [sp.write_point for sp in splices], batch_size=batch_size,
        padding_side=first.padding_side, dist=dist,
    )


@torch.no_grad()
def evaluate(sp, texts: list[str], dist: distributed.Dist, batch_size: int, references: References) -> dict:
    """Scores of `sp` on `texts` (sharded over ranks) as one JSON-ready record."""
    return evaluate_splices([sp], texts, dist, batch_size, references)[0]


@torch.no_grad()
def evaluate_splices(splices, texts: list[str], dist: distributed.Dist, batch_size: int,
                     references: References) -> list[dict]:  # fmt: skip
    """`evaluate`'s record for every splice of a run, scored together: A and B run once per batch of `texts`."""
    scores = score_splices(list(splices), texts, references, batch_size=batch_size, dist=dist, progress=False)
    return [_record(score) for score in scores]


def _record(score) -> dict:
    data = score.to_dict()
    headline = data["classes"][score.headline]
    return {
        **{k: v for k, v in headline.items() if k != "n_tokens"},
        "tokens": data["classes"]["all"]["n_tokens"],
        "headline": score.headline,
        "reference": score.reference,
        "classes": data["classes"],
    }
