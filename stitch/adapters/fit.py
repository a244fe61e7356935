"""Fit adapters from models: stream texts through A and B, pair states on the target grid, fit in closed form.

    >>> ad = fit_adapter(A, B, texts, source_layer=16, kind="procrustes")          # one call
    >>> ad = fit_adapter(A, B, texts, 16, 12, kind="affine", ridge=1e-2, batch_size=4)
    >>> stats = collect_stats(A, B, texts, [(8, 8), (16, 16), (16, EMBEDDINGS)])   # one pass, many pairs
    >>> Procrustes.fit_stats(stats[(16, 16)])
    >>> collect_grouped_stats(A, B, texts, {None: [(8, 8)], ("shared",): [(8, 8)]})  # per classes, one pass
    >>> ad = fit_adapter(A, B, texts, 16, kind="token_conditioned", window=2, ridge=1e-2)
    >>> ad = fit_from_store(store, 16, 16, kind="affine")     # pairs read from an activation store

Pairs follow the target grid of `stitch.Splice`: B token j is paired with the A token the splice would
feed it (the last A token ending at or before j's end). Padding and positions with no A token are
always dropped; BOS and other special tokens on either side are dropped by default (`drop_special`),
because their states (attention sinks, often with massive norms) would dominate a least-squares fit.
Memory is O(d²) per layer pair whatever the number of texts: only `SufficientStats` are kept.
With `window` (positions with no A token are then kept, with A's zero state, as the splice feeds them) (token-conditioned kinds, `stitch.adapters.conditioned`) each A state is concatenated with B's
conditioning vector at its B position: x is `[A's state, c]` of width d_source + window·d_target + 1.
The models run `batch_size` texts at a time. `max_length=n` cuts longer texts into chunks of at most n
tokens for both tokenizers (the same characters for A and B, see `stitch.chunks`); each chunk counts as a
text. A and B may be on different devices: the paired rows of A's states cross to B's device, where the
statistics accumulate.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from stitch.adapters.base import Adapter, adapter_class
from stitch.adapters.closed_form import (  # noqa: F401
    SufficientStats,
    check_ridge,
    solve_least_squares,
    solve_procrustes,
)
from stitch.adapters.conditioned import condition_features
from stitch.adapters.linear import CLOSED_FORM, fit_closed_form
from stitch.alignment.pairing import Pairing, pair_texts
from stitch.checks import check_layer, check_texts
from stitch.chunks import corpus_texts
from stitch.models.hooked import HookedLM
from stitch.models.placement import transfer
from stitch.models.states import EMBEDDINGS, Embeddings, input_embeddings, model_states

LayerPair = tuple[int, "int | Embeddings"]


def fit_adapter(
    A: HookedLM,
    B: HookedLM,
    texts: Sequence[str],
    source_layer: int,
    target_layer: int | None = None,
    kind: str = "procrustes",
    *,
    batch_size: int = 8,
    drop_special: bool = True,
    padding_side: str = "right",
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
    max_length: int | None = None,
    **options,
) -> Adapter:
    """A closed-form adapter from A's layer `source_layer` to B's `target_layer` (default: the same).

    `options` go to the fit (`ridge` for linear/affine, `scale`/`translation` for procrustes); the
    adapter is returned in `dtype` (float32 by default, whatever the models' dtype). `ridge` is relative
    to the paired states' scale (a fraction of x's mean variance per dimension, see
    `stitch.adapters.closed_form.ridge_penalty`): the same value fits 1K or 1M pairs alike.
    """
    check_fit_options(kind, options)
    pair = (source_layer, source_layer if target_layer is None else target_layer)
    stats = collect_stats(
        A,
        B,
        texts,
        [pair],
        batch_size=batch_size,
        drop_special=drop_special,
        padding_side=padding_side,
        progress=progress,
        window=condition_window(kind, options),
        max_length=max_length,
    )
    return fit_closed_form(kind, stats[pair], **options).to(dtype)


def fit_from_store(store, source_layer: int, target_layer: int, kind: str = "procrustes", *,
                   batch_size: int = 64, drop_special: bool = True, classes=None,
                   dtype: torch.dtype = torch.float32, **options) -> Adapter:  # fmt: skip
    """The closed-form adapter of `fit_adapter`, from the pairs of an `stitch.activations` store (no model runs)."""
    check_fit_options(kind, options)
    stats = SufficientStats()
    for start in range(0, len(store), batch_size):
        stored = store.batch(range(start, min(start + batch_size, len(store))))
        rows, src, tgt = stored.pairing.pairs(drop_special, classes)
        if rows.numel():
            stats.update(stored.source[source_layer][rows, src], stored.target[target_layer][rows, tgt])
    if stats.n == 0:
        raise ValueError(f"store: no paired positions in its {len(store)} texts")
    return fit_closed_form(kind, stats, **options).to(dtype)


def fit_option_names(kind: str) -> list[str]:
    """The options a closed-form fit of `kind` takes: `["ridge"]` for linear/affine."""
    cls = adapter_class(kind)
    if cls.kind not in CLOSED_FORM:
        raise ValueError(f"kind: {kind!r} has no closed-form fit; closed-form kinds: {list(CLOSED_FORM)}")
    return [p for p in inspect.signature(cls.fit_stats).parameters if p != "stats"]


def check_fit_options(kind: str, options: dict) -> None:
    """Refuse an unknown kind or option before any model runs (not after an hour of streaming)."""
    allowed, cls = fit_option_names(kind), adapter_class(kind)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"options: {unknown} are not options of a {cls.kind} fit; valid options: {allowed}")
    if "ridge" in options:
        check_ridge(options["ridge"])
    for name in ("scale", "translation"):
        if name in options and not isinstance(options[name], bool):
            raise TypeError(f"{name}: got {options[name]!r}; valid: true or false")


def condition_window(kind: str, options: dict) -> int | None:
    """The conditioning window a fit of `kind` needs in its statistics (None: a plain adapter)."""
    cls = adapter_class(kind)
    if not getattr(cls, "conditioned", False):
        return None
    return options.get("window", inspect.signature(cls.fit_stats).parameters["window"].default)


def collect_stats(
    A: HookedLM,
    B: HookedLM,
    texts: Sequence[str],
    layer_pairs: Sequence[LayerPair],
    *,
    batch_size: int = 8,
    drop_special: bool = True,
    padding_side: str = "right",
    progress: bool = True,
    classes=None,
    window: int | None = None,
    max_length: int | None = None,
    observers: Sequence = (),
) -> dict[LayerPair, SufficientStats]:
    """Streamed statistics of paired (A layer N, B layer M) states for every `(N, M)` in `layer_pairs`.

    A and B each run once per batch, up to the deepest layer asked of them. `M` may be `EMBEDDINGS`.
    `classes` (e.g. `["shared"]`, what a source-grid splice reads) keeps pairs of those position classes only.
    `window` appends B's conditioning vector to every A state (for token-conditioned fits).
    `observers` see every batch of the same pass: each has `layers` (the B layers it reads) and
    `update(pairing, states)`, called once per batch with the batch's `Pairing` and B's states there (e.g.
    `References.accumulator(B, points)` of `stitch.splice.references`: references without a second pass of B).
    """
    key = None if classes is None else tuple(classes)
    return collect_grouped_stats(
        A, B, texts, {key: layer_pairs}, batch_size=batch_size, drop_special=drop_special,
        padding_side=padding_side, progress=progress, window=window, max_length=max_length, observers=observers,
    )[key]


def collect_grouped_stats(
    A: HookedLM, B: HookedLM, texts: Sequence[str], groups: dict, *, batch_size: int = 8,
    drop_special: bool = True, padding_side: str = "right", progress: bool = True, window: int | None = None,
    max_length: int | None = None, observers: Sequence = (),
) -> dict:
    """`collect_stats` for several sets of fit pairs in one pass: `{classes: {pair: stats}}`.

        >>> stats = collect_grouped_stats(A, B, texts, {None: [(2, 2)], ("shared",): [(2, 2), (3, 1)]})
        >>> stats[("shared",)][3, 1]          # fitted on the shared pairs only; A and B ran once per batch

    `groups[classes]` are the layer pairs whose statistics keep the pairs of those position classes (None:
    every pair). The other options are `collect_stats`'s.
    """
    groups = _check_groups(A, B, groups)
    texts = corpus_texts([A.tokenizer, B.tokenizer], check_texts(texts), max_length)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    stats = {classes: {pair: SufficientStats() for pair in pairs} for classes, pairs in groups.items()}
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="pairing states", unit="batch", disable=not progress):
        aligned = pair_texts(A, B, texts[start : start + batch_size], padding_side)
        _accumulate(A, B, aligned, stats, drop_special, window, observers)
    if any(next(iter(group.values())).n == 0 for group in stats.values()):
        raise ValueError(
            f"texts: no paired positions in {len(texts)} texts (every position was padding, special "
            "or had no A token before it); use longer texts or drop_special=False"
        )
    return stats


@torch.no_grad()
def _accumulate(
    A: HookedLM, B: HookedLM, aligned: Pairing, stats: dict, drop_special: bool, window: int | None, observers
) -> None:
    # a token-conditioned fit also learns where no A token has finished: the splice feeds it adapter(0, c) there
    picked = {classes: aligned.pairs(drop_special, classes, keep_none=window is not None) for classes in stats}
    picked = {classes: p for classes, p in picked.items() if p[0].numel()}
    if not picked and not observers:
        return  # nothing to learn from this batch: neither model runs
    xs = model_states(A, aligned.source, {n for c in picked for n, _ in stats[c]})  # {} runs nothing
    b_layers = {m for c in picked for _, m in stats[c]}.union(*(o.layers for o in observers))
    ys = model_states(B, aligned.target, b_layers)
    for observer in observers:
        observer.update(aligned, ys)
    features = None
    if window is not None and picked:
        features = condition_features(input_embeddings(B, aligned.target), aligned.since_boundary(window))
    for classes, (rows, src, tgt) in picked.items():
        condition = None if features is None else features[rows, tgt]
        for n, m in stats[classes]:
            y = ys[m][rows.to(ys[m].device), tgt.to(ys[m].device)]
            src_a = src.to(xs[n].device)
            x = xs[n][rows.to(xs[n].device), src_a.clamp(min=0)] * (src_a >= 0).unsqueeze(-1)  # zero where A has none
            x = transfer(x, y.device)  # only the paired rows cross (A and B on two devices)
            x = x if condition is None else torch.cat([x, condition.to(device=x.device, dtype=x.dtype)], dim=-1)
            stats[classes][n, m].update(x, y)


def paired_positions(
    aligned: Pairing, drop_special: bool = True
) -> tuple[Int[Tensor, " n"], Int[Tensor, " n"], Int[Tensor, " n"]]:
    """(batch row, A position, B position) of every target-grid pair the splice would feed."""
    return aligned.pairs(drop_special)


def _check_groups(A: HookedLM, B: HookedLM, groups) -> dict:
    if not isinstance(groups, dict) or not groups:
        raise ValueError(f"groups: expected a non-empty {{classes: layer_pairs}} mapping, got {groups!r}")
    return {classes: _check_pairs(A, B, pairs) for classes, pairs in groups.items()}


def _check_pairs(A: HookedLM, B: HookedLM, layer_pairs) -> list[LayerPair]:
    if isinstance(layer_pairs, tuple) and len(layer_pairs) == 2 and not isinstance(layer_pairs[0], tuple):
        layer_pairs = [layer_pairs]  # a single (N, M) pair
    pairs = []
    for pair in layer_pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise ValueError(f"layer_pairs: expected (source_layer, target_layer) tuples, got {pair!r}")
        n, m = pair
        m = m if m == EMBEDDINGS else check_layer("layer_pairs (target layer)", m, B.n_layers)
        pairs.append((check_layer("layer_pairs (source layer)", n, A.n_layers), m))
    if not pairs:
        raise ValueError("layer_pairs: expected at least one (source_layer, target_layer) pair, got none")
    return list(dict.fromkeys(pairs))
