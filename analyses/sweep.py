"""Layer sweep — where can A talk to B? Fit a closed-form adapter per splice on training texts and score it
on held-out texts with the one evaluator (`stitch.splice.score`), per position class.

    >>> records = layer_sweep(A, B, train_texts, eval_texts, kind="affine", pairs=[(8, 8), (16, 14)],
    ...                       alignment=["target", "source"], save_dir="runs/sweep")
    >>> [(r.source_layer, r.loss_recovered) for r in records]          # headline: shared positions
    >>> records[0].classes["lagging"].ce_spliced                         # every class, and "all"
    >>> from analyses.figures.sweep import sweep_figure
    >>> sweep_figure(records).show()

Splices: explicit `pairs=[(N, M), ...]`, or A's `source_layers` (default: every layer) with B's layer matched
by index (`match="same"`, the default when depths agree) or by relative depth (`match="relative"`,
M = N · L_B / L_A rounded, halves up). Each splice runs on every grid in `alignment` with every injection in
`injection` ("residual", "hybrid", ...) at `positions` (default: each injection's own; see `stitch.Splice`);
with `baseline=True` each N also gets the embedding-injection row (an adapter of the same kind fitted from A's
layer N to B's input embeddings, given to B as `inputs_embeds`). Target-grid adapters are fitted on every
target-grid pair (what the splice feeds) - on the shared pairs only when the splice writes only there (e.g.
the hybrid injection) - and source-grid adapters on the shared pairs (what it reads).
`kind="token_conditioned"` fits adapters that also read B's input embeddings of the tokens since the last
shared boundary (`stitch.adapters.conditioned`; option `window`, default 2).

    >>> layer_sweep(A, B, train, held_out, pairs=[(2, 2)], kind="token_conditioned", ridge=1e-2,
    ...             injection=["residual", "hybrid"], alignment=["target", "source"])
Every score is relative to the context-free reference (B's unigram on the training texts), as in
`stitch.splice.score`; the mean-ablation CE is a diagnostic beside it.

Passes: A and B run once over the training texts, and that one pass gives every splice's fit statistics
(`collect_grouped_stats`, each on its own classes of pairs) and the references (B's label counts and mean
states at every write point, fed to `References.accumulator`); then `score_splices` runs once over the
held-out texts for every splice together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from stitch.adapters import save_adapter
from stitch.adapters.base import Adapter
from stitch.adapters.fit import check_fit_options, collect_grouped_stats, condition_window
from stitch.adapters.linear import fit_closed_form
from stitch.checks import check_choice, check_layer, check_texts
from stitch.chunks import corpus_texts
from stitch.models.hooked import HookedLM
from stitch.splice.injection import INJECTIONS
from stitch.splice.positions import Positions
from stitch.splice.score import References, SpliceScore, score_splices
from stitch.splice.splice import Splice

GRIDS = ("target", "source")


@dataclass(frozen=True)
class SweepRecord:
    """One splice of the sweep: how its adapter was fitted, and its `SpliceScore`.

    Every field of the score reads through: `record.source_layer`, `record.classes["lagging"]`, and the
    headline class's values (`record.ce_spliced`, `record.loss_recovered`, ...). `adapter` is the fitted
    adapter (not serialised); `adapter_path` where `save_dir` put it.
    """

    score: SpliceScore
    kind: str
    n_train_pairs: int
    adapter_path: str | None = None
    adapter: Adapter | None = field(default=None, compare=False, repr=False)

    def __getattr__(self, name: str):
        if name in ("score", "__setstate__") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.score, name)

    @property
    def n_eval_tokens(self) -> int:
        return self.score.classes["all"].n_tokens

    def to_dict(self) -> dict:
        fitted = {"kind": self.kind, "n_train_pairs": self.n_train_pairs, "adapter_path": self.adapter_path}
        return {**self.score.to_dict(), **fitted}

    def to_row(self) -> dict:
        """One flat table row: how it was fitted, the headline ratio, and the spliced CE of every class."""
        keys = ("source_layer", "target_layer", "injection", "positions", "alignment", "kind")
        row = {k: getattr(self, k) for k in keys} | {"B blocks run": "[{}, {})".format(*self.blocks_run.get("B", ("?", "?")))}
        row |= {
            f"loss recovered ({self.headline})": self.loss_recovered,
            f"CE native ({self.headline})": self.ce_native,
            f"CE context-free ({self.headline})": self.ce_context_free,
            f"CE mean-ablation ({self.headline})": self.ce_mean_ablation,
        }
        row |= {f"CE spliced, {name} (n={c.n_tokens})": c.ce_spliced for name, c in self.classes.items()}
        return row | {"note": self.note}

    @classmethod
    def from_dict(cls, data: dict) -> SweepRecord:
        fitted = {k: data[k] for k in ("kind", "n_train_pairs", "adapter_path") if k in data}
        score = SpliceScore.from_dict({k: v for k, v in data.items() if k not in fitted})
        return cls(score, **fitted)


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
    pairs: Sequence[tuple[int, int]] | None = None,
    match: str | None = None,
    kind: str = "affine",
    alignment: str | Sequence[str] = "target",
    injection: str | Sequence[str] = "residual",
    positions=None,
    baseline: bool = True,
    batch_size: int = 8,
    save_dir: str | Path | None = None,
    progress: bool = True,
    max_length: int | None = None,
    **fit_options,
) -> list[SweepRecord]:
    """Records for every splice and grid: `injection` splices first, then the embedding-injection baselines.

    `max_length=n` cuts longer texts (training and held-out) into chunks of at most n tokens for both models.
    """
    grids = _check_grids(alignment)
    injections = _check_injections(injection)
    selection = None if positions is None else Positions.parse(positions)
    check_fit_options(kind, fit_options)
    tokenizers = [A.tokenizer, B.tokenizer]
    train_texts = corpus_texts(tokenizers, check_texts(train_texts), max_length)
    eval_texts = corpus_texts(tokenizers, check_texts(eval_texts), max_length)
    layer_pairs = _layer_pairs(A, B, source_layers, pairs, match)
    wanted = _wanted(layer_pairs, grids, injections, selection, baseline)
    splices, references = _fitted(A, B, train_texts, wanted, kind, batch_size, progress, fit_options)
    scores = score_splices([sp for sp, _ in splices], eval_texts, references, batch_size=batch_size, progress=progress)
    records = [_record(sp, n_pairs, kind, score) for (sp, n_pairs), score in zip(splices, scores, strict=True)]
    return records if save_dir is None else [_saved(r, Path(save_dir)) for r in records]


def _check_grids(alignment) -> list[str]:
    grids = [alignment] if isinstance(alignment, str) else list(alignment)
    if not grids:
        raise ValueError(f"alignment: expected 'target', 'source' or a list of them, got {alignment!r}")
    for grid in grids:
        check_choice("alignment", grid, GRIDS)
    return list(dict.fromkeys(grids))


def _layer_pairs(A, B, source_layers, pairs, match) -> list[tuple[int, int]]:
    """Explicit `pairs`, or `source_layers` matched to B's depth."""
    if pairs is not None:
        if source_layers is not None or match is not None:
            raise ValueError("pairs: give either pairs=[(N, M), ...] or source_layers/match, not both")
        return _check_pairs(pairs, A.n_layers, B.n_layers)
    sources = _check_sources(source_layers, A.n_layers)
    match = match or ("same" if A.n_layers == B.n_layers else "relative")
    return list(zip(sources, matching_layers(sources, A.n_layers, B.n_layers, match), strict=True))


def _check_pairs(pairs, n_a: int, n_b: int) -> list[tuple[int, int]]:
    if isinstance(pairs, str) or not isinstance(pairs, Sequence) or len(pairs) == 0:
        raise ValueError(f"pairs: expected a non-empty list of (source_layer, target_layer), got {pairs!r}")
    out = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
            raise ValueError(f"pairs[{i}]: expected (source_layer, target_layer), got {pair!r}")
        out.append((check_layer(f"pairs[{i}][0] (A's layer)", pair[0], n_a), check_layer(f"pairs[{i}][1] (B's layer)", pair[1], n_b)))
    return list(dict.fromkeys(out))


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


def _check_injections(injection) -> list[str]:
    names = [injection] if isinstance(injection, str) else list(injection)
    if not names:
        raise ValueError(f"injection: expected one of {sorted(INJECTIONS)} or a list of them, got {injection!r}")
    for name in names:
        check_choice("injection", name, tuple(INJECTIONS))
    return list(dict.fromkeys(names))


def _wanted(layer_pairs, grids, injections, selection, baseline) -> list[dict]:
    """Every splice to fit and score, as Splice keyword arguments; baselines after the injection rows."""
    wanted = []
    for grid in grids:
        for inj in injections:
            positions = selection or Positions.parse(INJECTIONS[inj].default_positions)
            if grid == "source" and (not positions.every or INJECTIONS[inj].reads_own_lower):
                continue  # B has no states of its own on the source grid: the target grid only
            wanted += [dict(source_layer=n, target_layer=m, alignment=grid, injection=inj, positions=positions)
                       for n, m in layer_pairs]
        if baseline:
            every = Positions.parse("all")
            sources = dict.fromkeys(n for n, _ in layer_pairs)
            wanted += [dict(source_layer=n, target_layer=0, alignment=grid, injection="inputs_embeds",
                            positions=every) for n in sources]
    keys = {(w["source_layer"], w["target_layer"], w["alignment"], w["injection"]): w for w in wanted}
    return list(keys.values())


def _fit_classes(spec: dict):
    """The pairs an adapter is fitted on: what the splice writes (shared only, on the source grid or there)."""
    return ("shared",) if spec["alignment"] == "source" else spec["positions"].fit_classes


def _fitted(A, B, texts, wanted, kind, batch_size, progress, options):
    """(Splice, number of training pairs) for every wanted splice, and the references from the same pass.

    One pass of A and B over the training texts collects every splice's fit statistics (each on its own
    classes of pairs) and B's reference sums at every write point (`stitch.splice.references`).
    """
    points = {id(w): (w["source_layer"], INJECTIONS[w["injection"]].write_point(w["target_layer"])) for w in wanted}
    groups: dict = {}
    for w in wanted:
        groups.setdefault(_fit_classes(w), {})[points[id(w)]] = None
    sums = References.accumulator(B, [point for _, point in points.values()])
    stats = collect_grouped_stats(
        A, B, texts, {classes: list(pairs) for classes, pairs in groups.items()}, batch_size=batch_size,
        progress=progress, window=condition_window(kind, options), observers=[sums],
    )
    splices = []
    for w in wanted:  # in the order asked for
        fit = stats[_fit_classes(w)][points[id(w)]]
        adapter = fit_closed_form(kind, fit, **options).to(dtype=torch.float32)
        splices.append((Splice(A, B, adapter=adapter, **w), fit.n))
    return splices, sums.references()


def _record(sp: Splice, n_pairs: int, kind: str, score: SpliceScore) -> SweepRecord:
    return SweepRecord(score, kind, n_pairs, adapter=sp.adapter)


def _saved(record: SweepRecord, directory: Path) -> SweepRecord:
    """The record with its adapter written to `directory` (safetensors + JSON, atomic)."""
    where = "" if record.positions == "all" else "-" + record.positions.replace(" ", "_").replace(",", "_")
    name = f"{record.injection}{where}-{record.alignment}-N{record.source_layer}-M{record.target_layer}.safetensors"
    path = save_adapter(
        record.adapter, directory / name, source_layer=record.source_layer, target_layer=record.target_layer,
        injection=record.injection, alignment=record.alignment, positions=record.positions,
    )
    return dataclasses.replace(record, adapter_path=str(path))

