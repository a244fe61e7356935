"""Layer sweep — where can A talk to B? Fit a closed-form adapter at each splice layer on a training
split; report held-out CE beside B's native CE, the no-information CE and the embedding-injection baseline.

    >>> records = layer_sweep(A, B, train_texts, eval_texts, source_layers=[0, 8, 16], kind="affine", ridge=1e-2)
    >>> [(r.source_layer, r.loss_recovered) for r in records if r.injection == "residual"]
    >>> from analyses.figures.sweep import sweep_figure
    >>> sweep_figure(records).show()

For each source layer N the residual splice goes into B at M = N (`match="same"`, default when depths
agree) or at the same relative depth (`match="relative"`: M = N · L_B / L_A rounded, halves up). With
`baseline=True` each N also gets the embedding-injection row: an adapter of the same kind fitted from
A's layer N to B's input embeddings, its output given to B as `inputs_embeds` (DESIGN.md's flawed baseline).
- `ce_native`: B on its own on the held-out texts; the same labels score every row.
- `ce_no_information`: B fed the mean target state (over the training pairs) at every position of the
  splice: the best B can do knowing nothing of the text below the splice.
- `loss_recovered = (ce_no_information − ce_spliced) / (ce_no_information − ce_native)`; NaN when the
  denominator's magnitude is below 1e-9 nats (B gains nothing from its own states there, so the ratio is undefined).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from stitch.adapters import fit_closed_form
from stitch.adapters.fit import EMBEDDINGS, check_fit_options, collect_stats, model_states
from stitch.alignment.pairing import align_texts
from stitch.checks import check_choice, check_layer, check_texts
from stitch.losses import IGNORE, loss_recovered, next_token_labels, token_cross_entropy
from stitch.models.hooked import HookedLM
from stitch.splice.splice import Splice


@dataclass(frozen=True)
class SweepRecord:
    """One splice of the sweep, scored on held-out text (cross-entropies in nats per B token)."""

    source_layer: int
    target_layer: int
    injection: str  # "residual" (B runs from layer M) or "inputs_embeds" (the embedding-injection baseline)
    kind: str
    n_train_pairs: int
    n_eval_tokens: int
    ce_spliced: float
    ce_native: float
    ce_no_information: float
    loss_recovered: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SweepRecord:
        return cls(**data)


def matching_layers(source_layers: Sequence[int], n_layers_a: int, n_layers_b: int, match: str) -> list[int]:
    """B's splice layer for each A layer: the same index, or the same relative depth (halves round up)."""
    check_choice("match", match, ("same", "relative"))
    if match == "relative":
        return [(2 * n * n_layers_b + n_layers_a) // (2 * n_layers_a) for n in source_layers]
    for n in source_layers:
        if n > n_layers_b:
            raise ValueError(
                f"source_layers: layer {n} has no match in B (valid: 0..{n_layers_b} with "
                "match='same'); use match='relative'"
            )
    return list(source_layers)


def layer_sweep(
    A: HookedLM,
    B: HookedLM,
    train_texts: Sequence[str],
    eval_texts: Sequence[str],
    source_layers: Sequence[int] | None = None,
    *,
    match: str | None = None,
    kind: str = "affine",
    baseline: bool = True,
    batch_size: int = 8,
    progress: bool = True,
    **fit_options,
) -> list[SweepRecord]:
    """Records for every source layer (default: all of 0..L_A), residual splices first, then baselines."""
    check_fit_options(kind, fit_options)
    eval_texts = check_texts(eval_texts)
    sources = _check_sources(source_layers, A.n_layers)
    match = match or ("same" if A.n_layers == B.n_layers else "relative")
    pairs = list(zip(sources, matching_layers(sources, A.n_layers, B.n_layers, match), strict=True))
    pairs += [(n, EMBEDDINGS) for n in sources] if baseline else []
    stats = collect_stats(A, B, train_texts, pairs, batch_size=batch_size, progress=progress)
    splices = {pair: _splice(A, B, pair, fit_closed_form(kind, stats[pair], **fit_options)) for pair in stats}
    means = {m: stats[n, m].mean_y for n, m in stats}
    totals = _evaluate(splices, means, eval_texts, batch_size, progress)
    return [_record(pair, kind, stats[pair].n, totals) for pair in stats]


def _check_sources(source_layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """A's splice layers: all of 0..L_A by default, else a non-empty list of valid layers."""
    if source_layers is None:
        return list(range(n_layers + 1))
    if not isinstance(source_layers, Sequence) or isinstance(source_layers, str):
        raise TypeError(
            f"source_layers: expected a list of layers, got {source_layers!r} ({type(source_layers).__name__})"
        )
    if len(source_layers) == 0:
        raise ValueError(f"source_layers: expected a non-empty list of layers in 0..{n_layers}, got []")
    return [check_layer("source_layers", n, n_layers) for n in source_layers]


def _splice(A: HookedLM, B: HookedLM, pair, adapter) -> Splice:
    n, m = pair
    adapter = adapter.to(dtype=torch.float32)
    if m == EMBEDDINGS:
        return Splice(A, B, n, 0, adapter=adapter, injection="inputs_embeds")
    return Splice(A, B, n, m, adapter=adapter)


@torch.no_grad()
def _evaluate(splices: dict, means: dict, texts: list[str], batch_size: int, progress: bool) -> dict:
    """Summed token CE and token count for "native", ("none", M) and every (N, M) splice."""
    first = next(iter(splices.values()))
    A, B = first.A, first.B
    totals = defaultdict(lambda: [0.0, 0])
    for start in tqdm(
        range(0, len(texts), batch_size), desc="scoring splices", unit="batch", disable=not progress
    ):
        aligned = align_texts(A, B, texts[start : start + batch_size])
        target, labels = aligned.target, next_token_labels(aligned.target)
        _add(totals, "native", B.logits(target), labels)
        for m, mean in means.items():
            constant = mean.to(B.dtype).expand(*target.shape, -1).contiguous()
            _add(totals, ("none", m), _run_b(B, constant, m, target), labels)
        states = model_states(A, aligned.source, {n for n, _ in splices})
        for (n, m), sp in splices.items():
            _add(totals, (n, m), _run_b(B, sp.map_states(states[n], aligned), m, target), labels)
    return totals


def _run_b(B: HookedLM, states, m, target):
    # the two ways a splice enters B, exactly as stitch.Splice.forward does on the target grid
    return B.run_from_embeds(states, target) if m == EMBEDDINGS else B.run_from(states, m, target)


def _add(totals: dict, key, logits, labels) -> None:
    totals[key][0] += token_cross_entropy(logits, labels).double().sum().item()
    totals[key][1] += int((labels != IGNORE).sum())


def _record(pair, kind: str, n_pairs: int, totals: dict) -> SweepRecord:
    n, m = pair
    ce = {key: total / count for key, (total, count) in totals.items()}
    spliced, native, none = ce[pair], ce["native"], ce["none", m]
    recovered = loss_recovered(spliced, native, none)
    embeds = m == EMBEDDINGS
    return SweepRecord(
        source_layer=n,
        target_layer=0 if embeds else m,
        injection="inputs_embeds" if embeds else "residual",
        kind=kind,
        n_train_pairs=n_pairs,
        n_eval_tokens=totals["native"][1],
        ce_spliced=spliced,
        ce_native=native,
        ce_no_information=none,
        loss_recovered=recovered,
    )
