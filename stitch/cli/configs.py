"""The config of every subcommand: frozen dataclasses checked on construction; no torch is imported here.

    >>> FitConfig(source_model="a/", target_model="b/", source_layer=16, train_texts="t.txt", out="l16/",
    ...           kind="procrustes", ridge=0.1)
    ValueError: --ridge: only --kind linear or affine take a ridge penalty, got --kind procrustes

`__post_init__` checks types, ranges and combinations (messages name the option as typed);
`outputs()` lists the files a run writes (the preflight refuses to clobber them without --overwrite);
`check_models(a, b)` checks layers and widths against the models' saved configs, before any weights load.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from stitch.cli.options import (
    ModelPairConfig,
    batch_size_option,
    check_float,
    check_int,
    config_beside,
    flag,
    model_option,
    overwrite_option,
    path_option,
    progress_option,
    source_layer_option,
    target_layer_option,
)
from stitch.config import Config, option
from stitch.kinds import (
    ALIGNMENTS,
    CLOSED_FORM,
    DEFAULT_KIND,
    INJECTIONS,
    POSITION_SELECTIONS,
)

PAIRINGS = ("mean", "shared")  # analyses.layer_similarity.PAIRINGS (a test keeps them equal)
MEASURES = ("linear_cka", "debiased_cka", "rbf_cka", "svcca", "mean_cosine", "alignment", "uniformity")
MATCHES = ("same", "relative")
CONTROLS = ("random-init",)  # analyses.controls.CONTROLS
RIDGE_HELP = (
    "relative ridge: a fraction of the fitted features' mean variance per dimension (linear, affine, "
    "token_conditioned; default 0)"
)
WINDOW_HELP = "token_conditioned only: how many B tokens since the last shared boundary it reads (default 2)"
TEXTS_HELP = "one text per line, or .jsonl with a 'text' field"


def train_texts_option():
    return path_option("texts", help=f"training text file: {TEXTS_HELP}")


def eval_texts_option(required: bool):
    default, note = (dataclasses.MISSING, "") if required else (None, " (default: none)")
    return path_option("texts", default, help=f"held-out text file the splices are scored on: {TEXTS_HELP}{note}")


def check_positions(value: str | None) -> None:
    """--positions: a named selection or token indices like "0,-1" (`stitch.splice.positions.Positions.parse`)."""
    if value is None or value in POSITION_SELECTIONS:
        return
    try:
        [int(part) for part in value.split(",")]
    except ValueError:
        raise ValueError(
            f"--positions: got {value!r}; valid: {list(POSITION_SELECTIONS)} or token indices like 0,-1"
        ) from None


def parse_pair(text: str) -> tuple[int, int]:
    """"8:14" → (8, 14); the error names --pairs."""
    parts = str(text).split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--pairs: expected N:M with integer layers >= 0 (e.g. 8:8), got {text!r}")
    return int(parts[0]), int(parts[1])


def check_models_given(config) -> None:
    """Models A and B come from --source-model and --target-model, or from a saved --splice."""
    if config.splice is None:
        for name in ("source_model", "target_model"):
            if getattr(config, name) is None:
                raise ValueError(f"{flag(name)}: required (or give --splice DIR, a saved splice)")


def check_layer_in(name: str, value, n_layers: int | None, model: str) -> None:
    """A layer option against the model's depth (skipped when the depth could not be read)."""
    if value is not None and n_layers is not None and value > n_layers:
        raise ValueError(
            f"{flag(name)}: layer {value} is out of range for {model} with {n_layers} blocks; "
            f"valid: 0..{n_layers} (0 = embeddings, {n_layers} = last block's output)"
        )


def check_splice_layers(config, a, b) -> None:
    """--source-layer within A's depth, and B's layer M (--target-layer, else the source layer) within B's."""
    check_layer_in("source_layer", config.source_layer, a.n_layers, "--source-model")
    named = "target_layer" if config.target_layer is not None else "source_layer"
    target = config.source_layer if config.target_layer is None else config.target_layer
    check_layer_in(named, target, b.n_layers, "--target-model")


def check_fit_kind(config) -> None:
    """--ridge with linear/affine/token_conditioned; --window with token_conditioned; --scale and
    --translation with procrustes only."""
    if config.ridge is not None and config.kind not in ("linear", "affine", "token_conditioned"):
        raise ValueError(
            f"--ridge: only --kind linear, affine or token_conditioned take a ridge penalty, got --kind {config.kind}"
        )
    check_int(config, "window", 1)
    if config.window is not None and config.kind != "token_conditioned":
        raise ValueError(f"--window: only --kind token_conditioned takes it, got --kind {config.kind}")
    for name in ("scale", "translation"):
        if getattr(config, name, None) is not None and config.kind != "procrustes":
            raise ValueError(f"{flag(name)}: only --kind procrustes takes it, got --kind {config.kind}")


@dataclass(frozen=True)
class DemoConfig(Config):
    out: str = path_option("out_dir", "stitch-demo", help="directory for report.html and the records it is built from")
    quick: bool = option(False, help="tiny models and few texts (seconds; what the test suite runs)")
    cache_dir: str | None = option(None, help="model cache (default: $STITCH_CACHE_DIR, else $XDG_CACHE_HOME/stitch)")
    fit_texts: int = option(400, help="training texts the closed-form adapters are fitted on")
    eval_texts: int = option(119, help="held-out texts every score is measured on")
    train_steps: int | None = option(None, help="steps of the gradient-trained adapter (default: 150; 20 with --quick)")
    kind: str = option("affine", choices=("affine", "linear", "procrustes"), help="adapter kind")
    ridge: float = option(1e-3, help="ridge of the closed-form fits (a fraction of x's mean variance)")
    progress: bool = option(True, help="progress bars")

    def __post_init__(self):
        check_int(self, "fit_texts", 2)
        check_int(self, "eval_texts", 3)
        check_int(self, "train_steps", 1)
        check_float(self, "ridge", 0.0)

    def outputs(self) -> list[Path]:
        return []  # the demo's own directory: a rerun replaces its report and records


@dataclass(frozen=True)
class ReportConfig(Config):
    POSITIONAL: ClassVar[tuple[str, ...]] = ("run_dir",)

    run_dir: str = path_option("run_dir", help="a directory a stitch command wrote")
    out: str | None = path_option("out_file", None, help="where to write the report (default: RUN_DIR/report.html)")
    plotlyjs: str = option("inline", choices=("inline", "beside"),  # analyses.report.PLOTLYJS
                           help="inline: plotly.js inside the file; beside: plotly.min.js written once next to it")

    def outputs(self) -> list[Path]:
        return []  # the report is rebuilt from the records: nothing is lost


@dataclass(frozen=True)
class AlignConfig(Config):
    source_tokenizer: str = path_option("tokenizer", help="source (A) tokenizer: hub id, tokenizer or model directory")
    target_tokenizer: str = path_option("tokenizer", help="target (B) tokenizer: hub id, tokenizer or model directory")
    texts: str = path_option("texts", help=f"text file: {TEXTS_HELP}")
    out: str = path_option("out_dir", help="output directory")
    chars_per_line: int = option(80, help="line width of the token-alignment map")
    map_chars: int = option(2000, help="the map shows this many characters of the first text")
    overwrite: bool = overwrite_option()

    def __post_init__(self):
        check_int(self, "chars_per_line", 1)
        check_int(self, "map_chars", 1)

    def outputs(self) -> list[Path]:
        return [Path(self.out) / name for name in ("summary.json", "report.html", "config.yaml")]


@dataclass(frozen=True, kw_only=True)
class CkaConfig(ModelPairConfig):
    texts: str = path_option("texts", help=f"text file: {TEXTS_HELP}")
    out: str = path_option("out_dir", help="output directory")
    pairing: str = option(
        "mean", choices=PAIRINGS, help="mean: one sample per text; shared: per shared boundary"
    )
    measure: str = option("linear_cka", choices=MEASURES, help="similarity measure")
    null_permutations: int = option(0, help="permutations of the per-cell null (0: none)")
    control: str | None = option(
        None,
        choices=CONTROLS,
        help="random-init: also compute the matrix on A and B rebuilt from their configs with random weights "
        "(same tokenizers, texts and pairing) and report the excess over it",
    )
    seed: int = option(0, help="seed of the permutation null and of the control's random weights")
    batch_size: int = batch_size_option()
    overwrite: bool = overwrite_option()

    def __post_init__(self):
        super().__post_init__()
        check_int(self, "null_permutations", 0)
        check_int(self, "seed", 0)
        check_int(self, "batch_size", 1)

    def outputs(self) -> list[Path]:
        names = ("similarity.safetensors", "similarity.json", "report.html", "config.yaml")
        return [Path(self.out) / name for name in names]


@dataclass(frozen=True, kw_only=True)
class FitConfig(ModelPairConfig):
    source_layer: int = source_layer_option()
    train_texts: str = train_texts_option()
    out: str = path_option("out_adapter", help="adapter path: a .safetensors file or a directory")
    target_layer: int | None = target_layer_option()
    kind: str = option(DEFAULT_KIND, choices=CLOSED_FORM, help="closed-form adapter kind")
    ridge: float | None = option(None, help=RIDGE_HELP)
    window: int | None = option(None, help=WINDOW_HELP)
    scale: bool | None = option(None, help="fit a global scale (procrustes only; default off)")
    translation: bool | None = option(None, help="fit a translation (procrustes only; default off)")
    drop_special: bool = option(True, help="leave BOS and other special tokens out of the fit")
    batch_size: int = batch_size_option()
    progress: bool = progress_option()
    overwrite: bool = overwrite_option()

    def __post_init__(self):
        super().__post_init__()
        check_int(self, "source_layer", 0)
        check_int(self, "target_layer", 0)
        check_float(self, "ridge", 0.0)
        check_int(self, "batch_size", 1)
        check_fit_kind(self)

    def fit_options(self) -> dict:
        """The options given to the fit itself (`fit_adapter` refuses those the kind does not take)."""
        options = {"ridge": self.ridge, "scale": self.scale, "translation": self.translation, "window": self.window}
        return {k: v for k, v in options.items() if v is not None}

    def outputs(self) -> list[Path]:
        out = Path(self.out)
        if out.suffix == ".safetensors":
            return [out, out.with_suffix(".json"), config_beside(out)]
        return [out / "adapter.safetensors", out / "adapter_config.json", out / "config.yaml"]

    def check_models(self, a, b) -> None:
        check_splice_layers(self, a, b)


@dataclass(frozen=True, kw_only=True)
class SweepConfig(ModelPairConfig):
    source_model: str | None = model_option("source", None)
    target_model: str | None = model_option("target", None)
    train_texts: str = train_texts_option()
    eval_texts: str = eval_texts_option(required=True)
    out: str = path_option("out_dir", help="output directory")
    splice: str | None = path_option("splice", None, help="take models A and B from a splice saved with "
                                     "Splice.save_pretrained (instead of --source-model/--target-model)")
    source_layers: tuple[int, ...] | None = option(None, help="A layers to splice from (default: all)")
    match: str | None = option(
        None,
        choices=MATCHES,
        help="B layer per A layer: same index or same relative depth (default: same when depths agree)",
    )
    pairs: tuple[str, ...] | None = option(
        None, help="explicit splices N:M (e.g. 8:8 16:14); instead of --source-layers/--match"
    )
    alignment: tuple[str, ...] = option(("target",), help="grids to score on: target, source, or both")
    injection: str = option(
        "residual", choices=INJECTIONS,
        help="how A's states enter B (hybrid: B reads its own tokens below M, A's states at shared positions)",
    )  # fmt: skip
    positions: str | None = option(
        None,
        help=f"where A's states are written: {', '.join(POSITION_SELECTIONS)} or token indices like 0,-1 "
        "(default: the injection's own; B keeps its own states elsewhere and runs its lower blocks for them)",
    )
    kind: str = option(DEFAULT_KIND, choices=CLOSED_FORM, help="closed-form adapter kind")
    ridge: float | None = option(None, help=RIDGE_HELP)
    window: int | None = option(None, help=WINDOW_HELP)
    baseline: bool = option(True, help="also score the embedding-injection baseline")
    batch_size: int = batch_size_option()
    progress: bool = progress_option()
    overwrite: bool = overwrite_option()

    def __post_init__(self):
        super().__post_init__()
        check_models_given(self)
        for i, layer in enumerate(self.source_layers or ()):
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise ValueError(f"--source-layers: expected integers >= 0, got {layer!r} at position {i}")
        if self.source_layers is not None and len(set(self.source_layers)) != len(self.source_layers):
            raise ValueError(f"--source-layers: each layer once, got {list(self.source_layers)}")
        for pair in self.pairs or ():
            parse_pair(pair)
        if self.pairs is not None and (self.source_layers is not None or self.match is not None):
            raise ValueError("--pairs: give explicit N:M splices or --source-layers/--match, not both")
        for grid in self.alignment:
            if grid not in ALIGNMENTS:
                raise ValueError(f"--alignment: {grid!r} is not one of {list(ALIGNMENTS)}")
        if not self.alignment or len(set(self.alignment)) != len(self.alignment):
            raise ValueError(f"--alignment: each grid once, at least one, got {list(self.alignment)}")
        check_positions(self.positions)
        check_float(self, "ridge", 0.0)
        check_int(self, "batch_size", 1)
        check_fit_kind(self)

    def fit_options(self) -> dict:
        options = {"ridge": self.ridge, "window": self.window}
        return {k: v for k, v in options.items() if v is not None}

    def outputs(self) -> list[Path]:
        return [Path(self.out) / name for name in ("records.json", "report.html", "config.yaml")]

    def check_models(self, a, b) -> None:
        for layer in self.source_layers or ():
            check_layer_in("source_layers", layer, a.n_layers, "--source-model")
        for n, m in (parse_pair(p) for p in self.pairs or ()):
            check_layer_in("pairs", n, a.n_layers, "--source-model")
            check_layer_in("pairs", m, b.n_layers, "--target-model")
