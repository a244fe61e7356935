"""B's reference predictors for scoring (`stitch.splice.score`), estimated on the training texts.

    >>> refs = References.build(A, B, train_texts, [sp.write_point])       # one pass of B over the texts
    >>> sums = References.accumulator(B, [sp.write_point])                 # or fed by a pass that runs anyway:
    >>> stats = collect_stats(A, B, train_texts, [(2, 2)], observers=[sums])  # the fit's pass of A and B
    >>> refs = sums.references()                                           # equal to References.build's

The unigram is B's add-one-smoothed next-token label counts; a mean state is B's mean at a write point over the
target-grid training pairs (padding, unpaired and special positions dropped, as in fits). `ReferenceSums` is the
one implementation of both: `References.build` feeds it from its own pass, and anything that already runs B
over the training texts batch by batch (`stitch.adapters.fit.collect_stats(observers=...)`, the layer sweep)
feeds it the same batches instead of running B again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from stitch.alignment.pairing import Pairing, pair_texts
from stitch.checks import check_texts
from stitch.chunks import corpus_texts
from stitch.losses import IGNORE, next_token_labels
from stitch.models.states import model_states
from stitch.training import distributed


@dataclass(frozen=True)
class References:
    """B's reference predictors, estimated on the training texts.

    `unigram_log_probs[v]`: log of B's add-one-smoothed unigram over its next-token labels; `mean_states[p]`:
    B's mean state at write point `p` (a layer, or `EMBEDDINGS`) over the target-grid training pairs
    (padding, unpaired and special positions dropped, as in fits).
    """

    unigram_log_probs: Float[Tensor, " vocab"]
    mean_states: dict = field(default_factory=dict)
    n_train_labels: int = 0

    @classmethod
    @torch.no_grad()
    def build(
        cls, A, B, texts, write_points, *, batch_size: int = 8, padding_side: str = "right",
        dist: distributed.Dist | None = None, progress: bool = False, max_length: int | None = None,
    ) -> References:
        """One pass of B over `texts` (A only tokenizes): unigram counts and mean states at `write_points`.

        `max_length=n` cuts longer texts into chunks of at most n tokens for both models (`stitch.chunks`).
        """
        texts = corpus_texts([A.tokenizer, B.tokenizer], check_texts(texts), max_length)
        sums = cls.accumulator(B, write_points)
        mine = texts if dist is None else distributed.shard(texts, dist)
        for chunk in tqdm(text_batches(mine, batch_size), desc="reference losses", disable=not progress):
            pairing = pair_texts(A, B, chunk, padding_side)
            sums.update(pairing, model_states(B, pairing.target, sums.layers))
        return sums.references(dist)

    @staticmethod
    def accumulator(B, write_points) -> ReferenceSums:
        """Empty running sums for B's references at `write_points`, to feed batch by batch (see the module)."""
        return ReferenceSums(B.vocab_size, B.d_model, write_points)

    @classmethod
    def from_counts(cls, counts: Tensor, mean_states: dict) -> References:
        """From B's label counts over the training texts and precomputed mean states (e.g. a fit's statistics)."""
        counts = counts.double().cpu()
        log_probs = torch.log(counts + 1) - math.log(counts.sum().item() + len(counts))
        return cls(log_probs, dict(mean_states), int(counts.sum().item()))


class ReferenceSums:
    """Running sums of `References` over training batches: label counts, and state sums at the write points.

    `layers` are the B states `update` reads; feed every training batch once, then call `references()`.
    """

    def __init__(self, vocab_size: int, d_model: int, write_points) -> None:
        points = list(dict.fromkeys(write_points))
        self.layers = set(points)
        self.counts = torch.zeros(vocab_size, dtype=torch.float64)
        self.sums = {p: torch.zeros(d_model, dtype=torch.float64) for p in points}
        self.n_pairs = torch.zeros(1, dtype=torch.float64)

    @torch.no_grad()
    def update(self, pairing: Pairing, states: dict) -> None:
        """Add one batch: `pairing` of its texts, `states[p]` B's states at every write point p of `layers`."""
        self.counts += label_counts(pairing.target, len(self.counts))
        rows, _, tgt = pairing.pairs()
        for p, total in self.sums.items():
            total += states[p][rows, tgt].double().sum(0).cpu()
        self.n_pairs += len(rows)

    def references(self, dist: distributed.Dist | None = None) -> References:
        """The references of every batch fed (summed over ranks under torchrun, each having fed its share)."""
        counts, n_pairs, sums = self.counts, self.n_pairs, self.sums
        if dist is not None:
            counts, n_pairs = distributed.all_reduce_sum(counts, dist), distributed.all_reduce_sum(n_pairs, dist)
            sums = {p: distributed.all_reduce_sum(s, dist).view(s.shape) for p, s in sums.items()}
        return References.from_counts(counts, {p: s / n_pairs.clamp(min=1) for p, s in sums.items()})


def label_counts(batch, vocab_size: int) -> Float[Tensor, " vocab"]:
    """How often each B token is a next-token label in `batch` (what the unigram reference is counted on)."""
    labels = next_token_labels(batch)
    labels = labels[labels != IGNORE]
    return torch.bincount(labels.cpu(), minlength=vocab_size).double()


def text_batches(items: list, size: int) -> list[list]:
    """`items` cut into consecutive batches of `size` (the last may be shorter)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {size!r}")
    return [items[i : i + size] for i in range(0, len(items), size)]
