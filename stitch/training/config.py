"""TrainConfig: every option of a training run, checked on construction (errors name field, value, range).

>>> TrainConfig(out="runs/l16", source_layer=16, kind="affine", lr=1e-3, steps=2000)
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from dataclasses import dataclass
from typing import Any

import yaml

from stitch.checks import check_choice, check_max_length
from stitch.config import Config, option
from stitch.kinds import (
    ADAPTER_OPTIONS,
    ALIGNMENTS,
    AUTOCAST,
    CLOSED_FORM,
    DEFAULT_KIND,
    TRAINABLE,
    check_fit_options,
    fit_option_names,
)
from stitch.training.guide import METRICS
from stitch.training.sinks import SINKS

SCHEDULES, INITS = ("constant", "linear", "cosine"), ("default", "fit")
# the fields a resumed run may change: how long it runs, how often it reports, where it logs, and how the
# activations are obtained (not what any step computes); extending a finished run = more steps or epochs
FREE_ON_RESUME = (
    "resume", "progress", "keep_checkpoints", "device", "steps", "epochs", "eval_every", "log_every",
    "checkpoint_every", "log_to", "wandb_project", "cache", "early_stopping_patience", "samples", "sample_tokens",
)  # fmt: skip
_FREE_ON_RESUME = FREE_ON_RESUME


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Config):
    """What to train and how; every value is checked on construction (errors name the field and range).

    >>> TrainConfig(out="runs/l8", source_layer=8, kind="affine", lr=1e-3, steps=500)
    >>> TrainConfig.from_dict({"out": "runs/l8", "source_layer": 8, "lr": 3e-4})
    """

    out: str = option(help="output directory: adapter, metrics.jsonl, checkpoints/")
    source_layer: int | None = option(
        None, help="A's layer N (0 = embeddings, L = last block's output); or give --layer-pairs"
    )
    target_layer: int | None = option(None, help="B's layer M (default: the source layer)")
    layer_pairs: tuple[str, ...] | None = option(
        None, help="several splices trained together, as N:M (e.g. 8:8 16:14 24:20); instead of --source-layer"
    )
    pair_weights: tuple[float, ...] | None = option(None, help="weight of each layer pair's loss (default: 1 each)")
    shared_adapter: bool = option(False, help="one adapter for every layer pair (default: one per pair)")
    objectives: tuple[str, ...] = option(
        ("ce",),
        help="losses, each NAME or NAME:key=value,...: ce, kl, mse, cosine, infonce, soft_contrastive; "
        "keys weight, positions (all/shared/lagging), temperature, ... (see docs/training.md)",
    )
    kind: str = option(DEFAULT_KIND, choices=TRAINABLE, help="adapter kind")
    adapter_options: tuple[str, ...] | None = option(
        None, help="adapter options as key=value, e.g. rank=64 scale=0.5"
    )
    init: str = option(
        "default",
        choices=INITS,
        help="default: the adapter's own (identity-like) init; fit: a closed-form fit on the first "
        "--init-texts texts (procrustes, linear, affine)",
    )
    init_texts: int = option(256, help="training texts the closed-form init is fitted on")
    init_options: tuple[str, ...] | None = option(
        None,
        help="options of the closed-form init fit as key=value, e.g. ridge=1e-2 (relative ridge: a "
        "fraction of A's mean variance per dimension; linear and affine only)",
    )
    alignment: str = option("target", choices=ALIGNMENTS, help="token grid B runs on (see stitch.Splice)")
    steps: int | None = option(None, help="optimizer steps (default: --epochs passes over the texts)")
    epochs: int | None = option(None, help="passes over the texts when --steps is not given (default: 1)")
    batch_size: int = option(8, help="texts per step over all ranks (each rank takes its share)")
    lr: float = option(1e-3, help="peak learning rate (AdamW)")
    weight_decay: float = option(0.0, help="AdamW decoupled weight decay")
    grad_clip: float = option(1.0, help="clip the gradient norm to this (0: no clipping)")
    warmup: int = option(0, help="steps of linear warm-up to --lr")
    schedule: str = option("constant", choices=SCHEDULES, help="learning rate after the warm-up")
    eval_every: int = option(0, help="evaluate on the held-out texts every N steps (0: at start and end)")
    samples: int = option(
        0, help="at each evaluation, greedy continuations under the splice of the first N held-out texts' "
        "openings, written to metrics.jsonl and shown by `stitch report` (0: none)",
    )
    sample_tokens: int = option(16, help="new tokens B generates per sample")
    early_stopping_patience: int = option(
        0, help="stop after this many evaluations in a row without improvement (0: never stop early)"
    )
    early_stopping_metric: str = option(
        "ce_spliced", choices=tuple(METRICS), help="held-out metric early stopping and the best checkpoint follow"
    )
    early_stopping_min_delta: float = option(0.0, help="how much better than the best an evaluation must be")
    max_length: int | None = option(
        None, help="cut training and held-out texts longer than this many tokens of A or B (special tokens "
        "included) into chunks at the same characters (stitch.chunks; default: keep texts whole)",
    )
    stride: int = option(0, help="with max_length: tokens of context each chunk repeats from the one before")
    grad_accumulation: int = option(1, help="micro-batches per optimizer step on each rank (exact accumulation)")
    cache: str = option(
        "none", help="none (run A every step), memory, or a directory: activations computed once and reused"
    )
    autocast: str = option("none", choices=AUTOCAST, help="bf16/fp16 autocast of the models on a GPU")
    log_to: tuple[str, ...] = option((), help=f"also log to {' / '.join(SINKS)} (optional packages)")
    wandb_project: str | None = option(None, help="Weights & Biases project (default: stitch)")
    log_every: int = option(10, help="record the training loss every N steps")
    checkpoint_every: int = option(0, help="save a checkpoint every N steps and at the end (0: never)")
    keep_checkpoints: int = option(2, help="how many of the most recently written checkpoints to keep")
    resume: bool = option(True, help="continue from the latest checkpoint in OUT/checkpoints, if any")
    seed: int = option(0, help="seed of the adapter's init and of the order of the texts")
    progress: bool = option(True, help="show a progress bar (rank 0 only)")

    def __post_init__(self):
        for name, (kind, low, open_low) in _RANGES.items():
            _check_number(name, getattr(self, name), kind, low, open_low)
        for name, choices in _CHOICES.items():
            check_choice(name, getattr(self, name), choices)
        for name in ("out", "resume", "progress", "shared_adapter"):
            _check_type(name, getattr(self, name), str if name == "out" else bool)
        if self.steps is not None and self.epochs is not None:
            raise ValueError(
                f"steps, epochs: give one or the other, got steps={self.steps}, epochs={self.epochs}"
            )
        if self.steps is not None:
            check_warmup(self.warmup, self.steps)
        if self.init == "fit" and self.kind not in CLOSED_FORM:
            raise ValueError(
                f"init: 'fit' needs a closed-form kind {list(CLOSED_FORM)}, got kind={self.kind!r}"
            )
        for name in ("adapter_options", "init_options"):
            if isinstance(getattr(self, name), str):
                raise TypeError(f"{name}: expected a list of key=value strings, got {getattr(self, name)!r}")
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))
        self.options()  # malformed or unknown adapter options fail here, before any model loads
        self.fit_options()  # and so do the init fit's
        self._check_pairs()
        self._check_objectives()
        self._check_guide()
        if self.max_length is not None or self.stride:
            if self.max_length is None:
                raise ValueError(f"stride: {self.stride!r} needs max_length (it is the context chunks repeat)")
            check_max_length(self.max_length, self.stride)
        for name in self.log_to:
            check_choice("log_to", name, SINKS)
        if self.batch_size < self.grad_accumulation:
            raise ValueError(
                f"grad_accumulation: {self.grad_accumulation} micro-batches need batch_size >= "
                f"{self.grad_accumulation}, got batch_size={self.batch_size}"
            )

    def _check_pairs(self) -> None:
        if (self.source_layer is None) == (self.layer_pairs is None):
            raise ValueError(
                f"source_layer, layer_pairs: give exactly one, got source_layer={self.source_layer!r}, "
                f"layer_pairs={self.layer_pairs!r}"
            )
        if self.layer_pairs is not None:
            object.__setattr__(self, "layer_pairs", tuple(_pair_spec(p) for p in _as_tuple("layer_pairs", self.layer_pairs)))
            if not self.layer_pairs or len(set(self.layer_pairs)) != len(self.layer_pairs):
                raise ValueError(f"layer_pairs: expected distinct N:M pairs, got {list(self.layer_pairs)}")
            if self.target_layer is not None:
                raise ValueError("target_layer: with layer_pairs, give each pair's M as N:M instead")
        if self.pair_weights is not None:
            weights = tuple(float(w) for w in _as_tuple("pair_weights", self.pair_weights))
            if len(weights) != len(self.pairs()) or any(not math.isfinite(w) or w < 0 for w in weights):
                raise ValueError(
                    f"pair_weights: expected {len(self.pairs())} finite weights >= 0 (one per layer pair), "
                    f"got {list(self.pair_weights)}"
                )
            object.__setattr__(self, "pair_weights", weights)
        if self.shared_adapter and self.init == "fit" and len(self.pairs()) > 1:
            raise ValueError("init: 'fit' fits one pair; with shared_adapter over several pairs use init='default'")

    def _check_objectives(self) -> None:
        specs = _as_tuple("objectives", self.objectives)
        objectives = _objectives().parse_objectives(specs)
        object.__setattr__(self, "objectives", tuple(str(s) for s in specs))
        grid_bound = [o.name for o in objectives if o.target_grid_only]
        if self.alignment == "source" and grid_bound:
            raise ValueError(
                f"objectives: {grid_bound} compare with B's own states on B's grid; they need "
                "alignment='target' (only ce trains on the source grid)"
            )

    def _check_guide(self) -> None:
        if self.early_stopping_patience and not self.eval_every:
            raise ValueError(
                f"early_stopping_patience: {self.early_stopping_patience} needs evaluations; set eval_every > 0"
            )
        if self.samples and self.alignment == "source":
            raise ValueError(f"samples: {self.samples} needs alignment='target' (B generates its own tokens)")
        if not isinstance(self.cache, str) or not self.cache:
            raise ValueError(f"cache: expected 'none', 'memory' or a directory, got {self.cache!r}")

    def chunked(self, max_length: int | None, stride: int = 0) -> TrainConfig:
        """This config cutting texts to `max_length` tokens (`train_adapter`'s keywords); refuses a different
        value already set in the config."""
        if self.max_length is not None and (self.max_length, self.stride) != (max_length, stride):
            raise ValueError(
                f"max_length: {max_length!r} (stride {stride!r}) given to train, but the config already has "
                f"max_length={self.max_length!r} (stride {self.stride!r}); set it in one place"
            )
        return dataclasses.replace(self, max_length=max_length, stride=stride)

    def pairs(self) -> list[tuple[int, int | None]]:
        """The layer pairs (N, M); M is None where it defaults to N."""
        if self.layer_pairs is None:
            return [(self.source_layer, self.target_layer)]
        return [tuple(int(v) for v in p.split(":")) for p in self.layer_pairs]

    def weights(self) -> list[float]:
        return list(self.pair_weights or [1.0] * len(self.pairs()))

    def loss_objectives(self):
        return _objectives().parse_objectives(self.objectives)

    def options(self) -> dict[str, Any]:
        """`adapter_options` as keyword arguments of the adapter (values read as YAML: 64, 0.5, true)."""
        allowed = list(ADAPTER_OPTIONS[self.kind])
        return _key_values("adapter_options", self.adapter_options, allowed, f"a {self.kind} adapter")

    def fit_options(self) -> dict[str, Any]:
        """Keyword arguments of the `init="fit"` closed-form fit: the adapter's options plus `init_options`.

        >>> TrainConfig(out="o", source_layer=2, init="fit", init_options=("ridge=1e-2",)).fit_options()
        {'ridge': 0.01}
        """
        if self.init_options and self.init != "fit":
            raise ValueError(
                f"init_options: got {list(self.init_options)} with init={self.init!r}; valid only with "
                "init='fit' (they are options of the closed-form fit)"
            )
        if self.init != "fit":
            return {}
        allowed = fit_option_names(self.kind)
        own = _key_values("init_options", self.init_options, allowed, f"the {self.kind} fit")
        structural = {k: v for k, v in self.options().items() if k in allowed}
        twice = sorted(set(own) & set(structural))
        if twice:  # e.g. procrustes scale=: it shapes the adapter, so it is set once, in adapter_options
            raise ValueError(f"init_options: {twice} are already set by adapter_options; set them once")
        options = {**structural, **own}
        try:
            check_fit_options(self.kind, options)
        except (TypeError, ValueError) as err:  # name the field the user wrote, not the fit's argument
            raise type(err)(f"init_options: {err}") from None
        return options

    def run_fields(self) -> dict[str, Any]:
        """The fields that decide what a run computes (those a checkpoint must share to be resumed)."""
        return json.loads(json.dumps({k: v for k, v in self.to_dict().items() if k not in _FREE_ON_RESUME}))


def _key_values(field: str, items: tuple[str, ...], allowed: list[str], what: str) -> dict[str, Any]:
    options = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or key.strip() not in allowed:
            raise ValueError(
                f"{field}: {item!r} is not key=value with a key of {what}; valid keys: {allowed}"
            )
        options[key.strip()] = _scalar(value)
    return options


def _scalar(text: str) -> Any:
    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads 1e-2 (no dot) as a string; it is meant as a number
        try:
            return float(value)
        except ValueError:
            return value
    return value


# field: (type, lowest valid value, whether the lowest value itself is excluded); None allowed where typed so
_RANGES = {
    "grad_accumulation": (int, 1, False), "early_stopping_patience": (int, 0, False),
    "early_stopping_min_delta": (float, 0.0, False),
    "source_layer": (int, 0, False), "target_layer": (int, 0, False), "init_texts": (int, 1, False),
    "steps": (int, 1, False), "epochs": (int, 1, False), "batch_size": (int, 1, False),
    "lr": (float, 0.0, True), "weight_decay": (float, 0.0, False), "grad_clip": (float, 0.0, False),
    "warmup": (int, 0, False), "eval_every": (int, 0, False), "samples": (int, 0, False),
    "sample_tokens": (int, 1, False), "stride": (int, 0, False), "log_every": (int, 1, False),
    "checkpoint_every": (int, 0, False), "keep_checkpoints": (int, 1, False), "seed": (int, 0, False),
}  # fmt: skip
_OPTIONAL = ("source_layer", "target_layer", "steps", "epochs")
_CHOICES = {"kind": TRAINABLE, "init": INITS, "alignment": ALIGNMENTS, "schedule": SCHEDULES}


def check_warmup(warmup: int, steps: int) -> None:
    """A warm-up no longer than the run (a longer one never reaches the peak learning rate)."""
    if warmup > steps:
        raise ValueError(
            f"warmup: {warmup} steps is longer than the run's {steps} steps; valid warmup: 0..{steps}"
        )


def _check_number(name: str, value, kind: type, low, open_low: bool) -> None:
    if value is None and name in _OPTIONAL:
        return
    valid = f"{'an integer' if kind is int else 'a number'} {'>' if open_low else '>='} {low}"
    numeric = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, numeric):
        raise TypeError(f"{name}: expected {valid}, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or value < low or (open_low and value == low):
        raise ValueError(f"{name}: expected {valid}, got {value!r}")


def _check_type(name: str, value, kind: type) -> None:
    if not isinstance(value, kind):
        raise TypeError(f"{name}: expected a {kind.__name__}, got {value!r} ({type(value).__name__})")


def _as_tuple(name: str, value) -> tuple:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise TypeError(f"{name}: expected a list, got {value!r} ({type(value).__name__})")
    return tuple(value)


def _pair_spec(pair) -> str:
    """`"8:6"`, `"8"` (M = N), `[8, 6]` or `(8, 6)` → "8:6"; layers are checked against the models later."""
    parts = [str(p).strip() for p in pair] if isinstance(pair, list | tuple) else str(pair).split(":")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"layer_pairs: expected N:M with layers >= 0 (e.g. 16:14), got {pair!r}")
    return f"{int(parts[0])}:{int(parts[1])}"


def _objectives():
    """`stitch.training.losses`, loaded when a config is validated: its objectives are torch code, and
    `stitch --help` must not import torch."""
    return importlib.import_module("stitch.training.losses")
