"""Layer-by-layer similarity of two hooked models over a set of texts, and CKA across a splice.

    >>> from analyses.layer_similarity import layer_similarity, splice_cka
    >>> rec = layer_similarity(A, B, texts)                     # every layer 0..L_A against 0..L_B
    >>> rec.matrix.shape                                        # [A.n_layers + 1, B.n_layers + 1]
    >>> rec.best_match()                                        # most similar B layer per A layer
    >>> rec = layer_similarity(A, B, texts, pairing="shared", null_permutations=200)
    >>> rec.null.above_chance()                                 # cells above the permutation null
    >>> rec = layer_similarity(A, B, texts, control="random-init")
    >>> rec.control, rec.excess()                               # untrained models' matrix; the excess over it
    >>> splice_cka(A, B, adapter, source_layer=8, target_layer=8, texts=texts).after
    >>> layer_similarity(A, B, corpus, measure="minibatch_cka", batch_size=32, max_length=4096)  # streamed

Memory: every measure but "minibatch_cka" keeps all paired samples (float32, on CPU) until the end, so it
grows with the number of texts. `measure="minibatch_cka"` streams instead (Nguyen et al. 2021, see
`analyses.cka.MinibatchCKA`): each batch of `batch_size` texts is reduced to [layer_A, layer_B]
accumulators and dropped, so memory stays flat over any number of texts (batches with fewer than 4
samples are merged into the next). `max_length=n` cuts longer texts into chunks of at most n tokens for
both tokenizers (the same characters for A and B, see `stitch.chunks`); each chunk counts as a text.

Pairing decides which states of A and B count as "the same sample":
- "mean": one sample per text, the mean of its residual stream over real tokens. Padding is excluded
  by the attention mask and so are the tokens the tokenizer inserts (BOS/EOS, `special_mask`): a BOS
  state is the same for every text and would only add a shared offset. Works across tokenizers.
- "shared": one sample per shared boundary, a position where both tokenizations end at the same
  byte, so both models have read exactly the same prefix (the shared class of `stitch.alignment.pairing`; special
  tokens never count). Identical tokenizers pair every real token with itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.cka import MinibatchCKA
from analyses.controls import check_control, control_models
from analyses.similarity import (
    LOWER_IS_SIMILAR,
    NullResult,
    mean_cosine,
    min_samples,
    permutation_null_matrix,
    resolve_measure,
    similarity_matrix,
)
from stitch.alignment.pairing import pair_batches
from stitch.batch import Batch
from stitch.checks import check_choice, check_layer, check_texts
from stitch.chunks import corpus_texts
from stitch.models.placement import transfer

PAIRINGS = ("mean", "shared")


@dataclass(frozen=True, eq=False)
class LayerSimilarity:
    """`matrix[i, j]` = similarity of A's layer i and B's layer j over `n` paired samples of `texts`."""

    matrix: Float[Tensor, "layer_source layer_target"]
    texts: tuple[str, ...]
    pairing: str
    measure: str
    n: int
    source: str
    target: str
    null: NullResult | None = None
    control: Float[Tensor, "layer_source layer_target"] | None = None  # the same matrix on control models
    control_kind: str | None = None  # which control (`analyses.controls.CONTROLS`), e.g. "random-init"
    control_seed: int | None = None

    def excess(self) -> Float[Tensor, "layer_source layer_target"]:
        """How much more similar than the control each cell is (sign flipped for distance-like measures)."""
        if self.control is None:
            raise ValueError(
                "control: this record has none; compute it with layer_similarity(..., control='random-init')"
            )
        sign = -1.0 if self.measure in LOWER_IS_SIMILAR else 1.0
        return sign * (self.matrix - self.control)

    def best_match(self) -> Tensor:
        """For each A layer, the index of the most similar B layer (the minimum for distance-like measures)."""
        return self.matrix.argmin(dim=1) if self.measure in LOWER_IS_SIMILAR else self.matrix.argmax(dim=1)

    def to_dict(self) -> dict:
        return {
            "matrix": self.matrix.tolist(),
            "texts": list(self.texts),
            "pairing": self.pairing,
            "measure": self.measure,
            "n": self.n,
            "source": self.source,
            "target": self.target,
            "null": None if self.null is None else self.null.to_dict(),
            "control": None if self.control is None else self.control.tolist(),
            "control_kind": self.control_kind,
            "control_seed": self.control_seed,
        }


@dataclass(frozen=True)
class SpliceSimilarity:
    """Similarity of A's layer `source_layer` to B's `target_layer`, before and after the adapter."""

    source_layer: int
    target_layer: int
    pairing: str
    measure: str
    n: int
    before: float
    after: float
    cosine_after: float  # mean cosine of adapter(A) and B states: direction, not just geometry

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def layer_similarity(
    A,
    B,
    texts: Sequence[str],
    pairing: str = "mean",
    measure="linear_cka",
    null_permutations: int = 0,
    batch_size: int = 8,
    seed: int = 0,
    control: str | None = None,
    max_length: int | None = None,
) -> LayerSimilarity:
    """Every layer 0..A.n_layers of A against every layer 0..B.n_layers of B on the same texts.

        >>> rec = layer_similarity(A, B, texts, pairing="mean", measure="debiased_cka")
        >>> analyses.figures.similarity.similarity_heatmap(rec)

    `measure` is a name from `analyses.similarity.MEASURES` or a callable (x, y) -> float. With
    `null_permutations > 0`, `rec.null` holds the per-cell permutation null (see `NullResult`),
    shuffled with a generator seeded by `seed`. `batch_size` texts are run through each model at once.
    With `control="random-init"`, `rec.control` is the same matrix (same texts, tokenizers and pairing)
    on A and B rebuilt from their configs with random weights (seeds `seed`, `seed + 1`; see
    `analyses.controls`), and `rec.excess()` the difference; the control models are held only while
    their matrix is computed (peak memory: both pairs of models at once).
    """
    if isinstance(null_permutations, bool) or not isinstance(null_permutations, int) or null_permutations < 0:
        raise ValueError(f"null_permutations: {null_permutations!r}; expected an integer >= 0 (0 = no null)")
    if control is not None:
        check_control(control, seed)
    if measure == STREAMED:
        texts = _chunked(A, B, _check(texts, pairing, "linear_cka", batch_size)[0], max_length)
        rec = _streamed(A, B, texts, pairing, batch_size, null_permutations)
        if control is None:
            return rec
        matrix = _streamed(*control_models(control, A, B, seed), texts, pairing, batch_size, 0).matrix
        return dataclasses.replace(rec, control=matrix, control_kind=control, control_seed=seed)
    texts, name = _check(texts, pairing, measure, batch_size)
    texts = _chunked(A, B, texts, max_length)
    xs, ys = _all_layer_states(A, B, texts, pairing, batch_size, name)
    n = xs[0].shape[0]
    if null_permutations:
        null = permutation_null_matrix(xs, ys, measure, null_permutations, seed)
        matrix = null.observed
    else:
        null, matrix = None, similarity_matrix(xs, ys, measure)
    del xs, ys  # a control's states replace the models' own in memory, not add to them
    rec = LayerSimilarity(matrix, tuple(texts), pairing, name, n, A.name, B.name, null)
    return rec if control is None else _with_control(rec, A, B, control, measure, batch_size, seed)


def _with_control(rec: LayerSimilarity, A, B, control: str, measure, batch_size: int, seed: int):
    A0, B0 = control_models(control, A, B, seed)
    xs, ys = _all_layer_states(A0, B0, list(rec.texts), rec.pairing, batch_size, rec.measure)
    matrix = similarity_matrix(xs, ys, measure)
    return dataclasses.replace(rec, control=matrix, control_kind=control, control_seed=seed)


def _all_layer_states(A, B, texts, pairing, batch_size, name):
    """Paired states of every layer of A and B, with enough samples for the measure (else an error)."""
    layers_a, layers_b = list(range(A.n_layers + 1)), list(range(B.n_layers + 1))
    xs, ys = paired_states(A, B, texts, layers_a, layers_b, pairing, batch_size)
    _check_enough(xs[0].shape[0], name, len(texts), pairing)
    return xs, ys


def splice_cka(
    A,
    B,
    adapter: Callable[[Tensor], Tensor],
    source_layer: int,
    target_layer: int,
    texts: Sequence[str],
    pairing: str = "shared",
    measure="linear_cka",
    batch_size: int = 8,
    max_length: int | None = None,
) -> SpliceSimilarity:
    """Similarity of A's states to B's at a splice, raw ("before") and through `adapter` ("after").

    >>> s = splice_cka(A, B, stitch.adapters.Procrustes.fit(x, y), 8, 8, texts)
    >>> s.before, s.after, s.cosine_after
    """
    texts, name = _check(texts, pairing, measure, batch_size)
    texts = _chunked(A, B, texts, max_length)
    source_layer = check_layer("source_layer", source_layer, A.n_layers)
    target_layer = check_layer("target_layer", target_layer, B.n_layers)
    raw, adapted, ys = paired_states(
        A, B, texts, [source_layer], [target_layer], pairing, batch_size, adapter
    )
    _check_enough(ys[0].shape[0], name, len(texts), pairing)
    before, after = similarity_matrix(raw + adapted, ys, measure)[:, 0].tolist()  # B's side prepared once
    return SpliceSimilarity(
        source_layer,
        target_layer,
        pairing,
        name,
        ys[0].shape[0],
        before,
        after,
        mean_cosine(adapted[0], ys[0]),
    )


def _check_enough(n: int, measure: str, n_texts: int, pairing: str) -> None:
    # below this a CKA is 1 whatever the states (n <= 2) or undefined (debiased, n < 4): an error, not a matrix
    needed = min_samples(measure)
    if n < needed:
        hint = " or use pairing='shared' (one sample per shared boundary)" if pairing == "mean" else ""
        raise ValueError(
            f"texts: {n_texts} texts give {n} paired samples with pairing={pairing!r}; "
            f"{measure} needs at least {needed}: add texts{hint}"
        )


def _check(texts, pairing, measure, batch_size) -> tuple[list[str], str]:
    texts = check_texts(texts)
    check_choice("pairing", pairing, PAIRINGS)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: {batch_size!r}; expected an integer >= 1")
    return texts, resolve_measure(measure)[0]


def paired_states(
    A,
    B,
    texts: list[str],
    layers_a: list[int],
    layers_b: list[int],
    pairing: str,
    batch_size: int,
    adapter: Callable | None = None,
):
    """Paired samples per layer: (xs, ys), or (xs, adapter(xs), ys) with an adapter; float32 on CPU.

    >>> xs, ys = paired_states(A, B, texts, [0, 4], [0, 2], "shared", batch_size=8)
    >>> xs[1].shape, ys[1].shape        # [n, A.d_model], [n, B.d_model], rows paired
    """
    same = B is A and layers_b == layers_a  # self-similarity: one forward, and CKA shares the Grams
    xs, adapted, ys = [], [], []
    for x, a, y in paired_batches(A, B, texts, layers_a, layers_b, pairing, batch_size, adapter):
        xs.append(x)
        adapted.append(a)
        ys.append(y)
    xs = _concat(xs)
    _check_any_shared(xs[0].shape[0])
    ys = xs if same else _concat(ys)
    return (xs, ys) if adapter is None else (xs, _concat(adapted), ys)


def paired_batches(A, B, texts, layers_a, layers_b, pairing, batch_size, adapter=None):
    """Per batch of `batch_size` texts: (xs, adapter(xs) or None, ys), lists of [samples, d] float32 on CPU.

    Only one batch's states are alive at a time; `ys is xs` when B is A at the same layers.
    """
    same = B is A and layers_b == layers_a
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        batch_a = A.encode(chunk)
        batch_b = batch_a if B is A else B.encode(chunk)
        with torch.no_grad():
            res_a = A.residuals(batch_a, layers=layers_a)
            res_b = res_a if same else B.residuals(batch_b, layers=layers_b)
            pick_a, pick_b = _selectors(batch_a, batch_b, pairing, chunk, start)
            xs = [_cpu(pick_a(res_a[layer])) for layer in layers_a]
            adapted = None if adapter is None else [_cpu(pick_a(_adapt(adapter, res_a[layer]))) for layer in layers_a]
            ys = xs if same else [_cpu(pick_b(res_b[layer])) for layer in layers_b]
        del res_a, res_b  # before the next batch runs: one batch of states at a time
        yield xs, adapted, ys


STREAMED = "minibatch_cka"


def _streamed(A, B, texts, pairing, batch_size, null_permutations) -> LayerSimilarity:
    """`layer_similarity` with measure="minibatch_cka": one batch of samples in memory at a time."""
    if null_permutations:
        raise ValueError(
            f"null_permutations: {null_permutations}; a permutation null needs every sample at once, which "
            "measure='minibatch_cka' never keeps; use measure='linear_cka' for a null"
        )
    # One batch is held back, so that a batch of fewer than 4 samples (too few for the unbiased HSIC
    # of a minibatch) joins its neighbour instead of being dropped.
    mb, held, n = MinibatchCKA(), None, 0
    layers_a, layers_b = list(range(A.n_layers + 1)), list(range(B.n_layers + 1))
    for xs, _, ys in paired_batches(A, B, texts, layers_a, layers_b, pairing, batch_size):
        n += xs[0].shape[0]
        if held is not None and min(xs[0].shape[0], held[0][0].shape[0]) < 4:
            xs, ys = _merged(held[0], xs), _merged(held[1], ys)
        elif held is not None:
            mb.update(*held)
        held = (xs, ys)
    _check_any_shared(n)
    pending = held
    _check_enough(pending[0][0].shape[0] if mb.n_batches == 0 else 4, "debiased_cka", len(texts), pairing)
    mb.update(*pending)
    return LayerSimilarity(mb.compute(), tuple(texts), pairing, STREAMED, n, A.name, B.name)


def _merged(first: list[Tensor], second: list[Tensor]) -> list[Tensor]:
    return [torch.cat(pair) for pair in zip(first, second, strict=True)]


def _chunked(A, B, texts: list[str], max_length: int | None) -> list[str]:
    return corpus_texts([A.tokenizer, B.tokenizer], texts, max_length)


def _check_any_shared(n: int) -> None:
    if n == 0:
        raise ValueError(
            "texts: no shared boundaries between the two tokenizations (no position where both "
            "models have read exactly the same text); use pairing='mean'"
        )


def _adapt(adapter, states: Tensor) -> Tensor:
    """`adapter(states)` where the adapter is (a Splice puts it on B's side) and in its dtype; a plain
    function (no parameters) gets the states as they are."""
    param = next(iter(adapter.parameters()), None) if isinstance(adapter, torch.nn.Module) else None
    return adapter(states if param is None else transfer(states, param.device, param.dtype))


def _cpu(states: Tensor) -> Tensor:
    return states.detach().float().cpu()


def _concat(chunks: list[list[Tensor]]) -> list[Tensor]:
    return [torch.cat(per_layer) for per_layer in zip(*chunks, strict=True)]


def _selectors(batch_a: Batch, batch_b: Batch, pairing: str, chunk: list[str], offset: int):
    """Functions [batch, pos, d] -> [samples, d] picking paired rows of A's and of B's states."""
    if pairing == "mean":
        weights = [_pool_weights(b, chunk, offset) for b in (batch_a, batch_b)]
        # Pool in float32 whatever the model's dtype: a bfloat16 sum over hundreds of tokens loses digits.
        # (weights to the states' device: a layer of a model sharded with device_map may be on another GPU)
        return tuple(
            (lambda states, w=w: torch.einsum("bp,bpd->bd", w.to(states.device), states.float())) for w in weights
        )
    rows, cols_a, cols_b = pair_batches(batch_a, batch_b).pairs(drop_special=True, classes=["shared"])
    return (
        lambda states: states[rows.to(states.device), cols_a.to(states.device)],
        lambda states: states[rows.to(states.device), cols_b.to(states.device)],
    )


def _pool_weights(batch: Batch, chunk: list[str], offset: int) -> Float[Tensor, "batch pos"]:
    """Mean-pooling weights: 1/count on real, non-special tokens, 0 on padding and BOS/EOS."""
    keep = batch.attention_mask.bool() & ~batch.special_mask.bool()
    counts = keep.sum(1, keepdim=True)
    if bool((counts == 0).any()):
        i = int(torch.nonzero(counts.flatten() == 0)[0])
        raise ValueError(
            f"texts[{offset + i}]: {chunk[i]!r} has no tokens besides special ones; nothing to pool"
        )
    return keep.float() / counts
