"""THE evaluator of stitch: a splice's held-out cross-entropy beside its reference losses, per position class.

    >>> refs = References.build(A, B, train_texts, [sp.write_point])       # unigram + mean state, from training
    >>> [score] = score_splices([sp], eval_texts, refs)
    >>> score.loss_recovered                    # the headline: shared positions, relative to context-free
    >>> score.classes["lagging"].ce_spliced     # every class, and "all"
    >>> sums = References.accumulator(B, [sp.write_point])     # the references from a pass that runs anyway
    >>> collect_stats(A, B, train_texts, [(2, 2)], observers=[sums]); refs = sums.references()

`References` (and its running sums, `ReferenceSums`) live in `stitch.splice.references` and are named here too.

On the same texts and labels (nats per B label):
- `ce_spliced`: B reading A's mapped states;
- `ce_native`: B alone;
- `ce_context_free`: B's add-one-smoothed unigram over its next-token labels in the training texts; what any
  predictor that knows nothing of the text reaches;
- `ce_mean_ablation`: B fed its mean state where the splice writes (mean over the training pairs), at the
  positions it writes to (B's own states elsewhere, as in the splice: e.g. the shared positions of a hybrid
  injection); a diagnostic, often worse than uniform;
- `loss_recovered = (ce_context_free − ce_spliced) / (ce_context_free − ce_native)`: 1 = B lost nothing, 0 = A's
  states told B nothing a unigram does not know; NaN (with a `note`) when the denominator is below
  `TOLERANCE` nats.

Classes (`stitch.alignment.pairing`): "shared", "lagging", "none", and "all" positions. On the source grid
every label is shared by construction, and B's native CE is taken on exactly those labels (at the B position
one before the label's B token). Sweeps, training evaluation, the CLI, the demo and the report all score here.
Each score records the splice's `positions`, the blocks it ran (`blocks_run`) and the question it answers
(`answers`: the hybrid injection answers a different one from the splice).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from stitch.alignment.pairing import CLASSES, Pairing, pair_texts
from stitch.checks import check_texts
from stitch.chunks import corpus_texts
from stitch.losses import IGNORE, next_token_labels, token_cross_entropy
from stitch.models.states import model_states
from stitch.splice.references import References, ReferenceSums, label_counts, text_batches  # noqa: F401 (public here)
from stitch.training import distributed

TOLERANCE = 1e-3  # nats: a smaller gap between context-free and native CE makes the ratio noise
CLASS_NAMES = ("all", *CLASSES)
HEADLINE = "shared"  # cross-tokenizer splices are judged where both models have read the same prefix
REFERENCE = "context_free"
_SUMS = ("n", "spliced", "native", "context_free", "mean_ablation")


def loss_recovered(ce_spliced: float, ce_native: float, ce_reference: float) -> tuple[float, str]:
    """(CE_reference − CE_spliced) / (CE_reference − CE_native), and why it is NaN ("" when it is not)."""
    gap = ce_reference - ce_native
    if not math.isfinite(gap) or abs(gap) < TOLERANCE:
        return float("nan"), (
            f"undefined: the reference CE is within {TOLERANCE} nats of B's native CE "
            f"({ce_reference:.4f} vs {ce_native:.4f}), so B gains nothing from its own states here"
        )
    return (ce_reference - ce_spliced) / gap, ""


@dataclass(frozen=True)
class ClassScore:
    """Scores of one position class (cross-entropies in nats per label)."""

    n_tokens: int
    ce_spliced: float
    ce_native: float
    ce_context_free: float
    ce_mean_ablation: float
    loss_recovered: float  # relative to ce_context_free (the reference)
    loss_recovered_mean_ablation: float  # the same ratio relative to ce_mean_ablation: a diagnostic
    note: str = ""  # why a ratio is NaN

    @classmethod
    def from_sums(cls, sums: Tensor) -> ClassScore:
        n, spliced, native, free, mean = sums.tolist()
        if n == 0:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan, nan, "no label of this class in the texts")
        ce = [spliced / n, native / n, free / n, mean / n]
        recovered, note = loss_recovered(ce[0], ce[1], ce[2])
        diagnostic, _ = loss_recovered(ce[0], ce[1], ce[3])
        return cls(int(n), *ce, recovered, diagnostic, note)

    @classmethod
    def from_dict(cls, data: dict) -> ClassScore:
        """From `to_dict()` output, where NaN was written as null."""
        return cls(**{k: float("nan") if v is None else v for k, v in data.items()})


@dataclass(frozen=True)
class SpliceScore:
    """One splice scored on held-out texts: a `ClassScore` per class in `CLASS_NAMES`."""

    source_layer: int
    target_layer: int
    injection: str
    alignment: str
    classes: dict[str, ClassScore]
    reference: str = REFERENCE
    headline: str = HEADLINE
    positions: str = "all"
    blocks_run: dict = field(default_factory=dict)  # {"A": [0, N], "B": [first, L_B]}, half-open
    answers: str = ""

    def __getattr__(self, name: str):
        # ce_spliced, loss_recovered, n_tokens, ...: the headline class's value
        if name in ClassScore.__dataclass_fields__ and name != "classes":
            return getattr(self.classes[self.headline], name)
        raise AttributeError(name)

    def to_dict(self) -> dict:
        return _json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> SpliceScore:
        classes = {k: ClassScore.from_dict(v) for k, v in data["classes"].items()}
        return cls(**{**data, "classes": classes})


@torch.no_grad()
def score_splices(
    splices: Sequence, texts, references: References, *, batch_size: int = 8,
    dist: distributed.Dist | None = None, progress: bool = True, max_length: int | None = None,
) -> list[SpliceScore]:
    """Score splices that share A, B and padding side on held-out `texts`, in one pass over the texts.

    A runs once per batch (to the deepest source layer), B natively once, B mean-ablated once per write point.
    Under torchrun each rank scores its share of the texts and the sums are all-reduced. `max_length=n`
    scores longer texts as chunks of at most n tokens, cut at the same characters for A and B.
    """
    _check_splices(splices, references)
    first = splices[0]
    texts = corpus_texts([first.A.tokenizer, first.B.tokenizer], check_texts(texts), max_length)
    sums = torch.zeros(len(splices), len(CLASS_NAMES), len(_SUMS), dtype=torch.float64)
    mine = texts if dist is None else distributed.shard(texts, dist)
    for chunk in tqdm(text_batches(mine, batch_size), desc="scoring splices", unit="batch", disable=not progress):
        pairing = pair_texts(first.A, first.B, chunk, first.padding_side)
        refs = _reference_ce(pairing, splices, references)
        states = model_states(first.A, pairing.source, {sp.source_layer for sp in splices})
        for i, sp in enumerate(splices):
            logits = sp.spliced_logits(states[sp.source_layer], pairing)
            spliced = token_cross_entropy(logits, pairing.labels(sp.alignment))
            sums[i] += _class_sums(pairing, sp, spliced, refs)
    if dist is not None:
        sums = distributed.all_reduce_sum(sums, dist).view(sums.shape)
    _check_any_label(sums, len(texts))
    return [_score(sp, sums[i]) for i, sp in enumerate(splices)]


def _reference_ce(pairing: Pairing, splices, references: References) -> dict:
    """Per-position CE on B's own grid: native, context-free, and mean-ablated at each write point."""
    B, target = splices[0].B, pairing.target
    labels = next_token_labels(target)
    free = -references.unigram_log_probs.to(labels.device)[labels.clamp(min=0)].float()
    out = {"labels": labels, "native": token_cross_entropy(B.logits(target), labels), "free": free}
    for sp in splices:
        key = _ablation_key(sp)
        if key not in out:  # the mean state where and how the splice writes; B's own states elsewhere
            mean = references.mean_states[sp.write_point].to(device=sp.write_device, dtype=B.dtype)
            constant = mean.expand(*target.shape, -1).contiguous()
            out[key] = token_cross_entropy(sp.target_logits(constant, target, sp.selected(pairing)), labels)
    return out


def _ablation_key(sp) -> tuple:
    return ("mean", sp.write_point, sp.injection, sp.positions.key, sp.combine.name)


def _class_sums(pairing: Pairing, sp, spliced: Float[Tensor, "batch pos"], refs: dict) -> Tensor:
    """[class, (n, spliced, native, context-free, mean-ablation)] summed over this batch's labels."""
    mean = refs[_ablation_key(sp)]
    if sp.alignment == "source":
        rows, cols = (pairing.source_labels != IGNORE).nonzero(as_tuple=True)
        at = pairing.source_label_positions()[rows, cols]
        values = [_pick(spliced, rows, cols), *(_pick(refs[k], rows, at) for k in ("native", "free")), _pick(mean, rows, at)]
        classes = torch.full_like(rows, CLASSES["shared"])
    else:
        rows, cols = (refs["labels"] != IGNORE).nonzero(as_tuple=True)
        values = [_pick(t, rows, cols) for t in (spliced, refs["native"], refs["free"], mean)]
        classes = pairing.classes[rows, cols]
    stacked = torch.stack([torch.ones_like(values[0]), *values], dim=-1)
    out = torch.zeros(len(CLASS_NAMES), len(_SUMS), dtype=torch.float64)
    out[0] = stacked.sum(0)
    for k, code in enumerate(CLASSES.values(), start=1):
        out[k] = stacked[classes.cpu() == code].sum(0)
    return out


def _pick(values: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """values[rows, cols] in float64 on the CPU: a sharded B's CE sits on its output device, the labels' on its
    embedding's."""
    return values[rows.to(values.device), cols.to(values.device)].double().cpu()


def _score(sp, sums: Tensor) -> SpliceScore:
    classes = {name: ClassScore.from_sums(sums[k]) for k, name in enumerate(CLASS_NAMES)}
    blocks = {model: list(span) for model, span in sp.blocks_run.items()}
    return SpliceScore(
        sp.source_layer, sp.target_layer, sp.injection, sp.alignment, classes,
        positions=sp.positions.label, blocks_run=blocks, answers=sp.answers,
    )


def _check_splices(splices, references: References) -> None:
    if len(splices) == 0:
        raise ValueError("splices: expected at least one Splice to score, got none")
    first = splices[0]
    for i, sp in enumerate(splices):
        if sp.A is not first.A or sp.B is not first.B or sp.padding_side != first.padding_side:
            raise ValueError(f"splices[{i}]: every splice scored together needs the same A, B and padding_side")
        if sp.write_point not in references.mean_states:
            raise ValueError(
                f"references: no mean state at {sp.write_point!r} (splices[{i}] writes there); build the "
                f"references with write_points including it; have {list(references.mean_states)}"
            )


def _check_any_label(sums: Tensor, n_texts: int) -> None:
    if sums[0, 0, 0] == 0:
        raise ValueError(f"texts: no next-token label in {n_texts} texts; texts need at least two tokens")


def _json_safe(value):
    """NaN and infinities become None (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value

