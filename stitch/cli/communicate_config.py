"""The config of `stitch communicate` (torch-free, like every config of `stitch.cli.configs`).

    >>> CommunicateConfig(source_model="a/", target_model="b/", tasks="qa", ks=(2, 4), js=(2,), out="runs/c",
    ...                   adapter="closed_form", fit_texts="paired.txt", kind="affine", ridge=1e-2)
    >>> CommunicateConfig(..., adapter="trained", fit_texts="paired.txt", kind="projection", train_steps=200)
    >>> CommunicateConfig(..., adapter="runs/fit/adapter.safetensors")    # one saved adapter for every (k, j)
    >>> CommunicateConfig(..., adapter="closed_form")
    ValueError: --fit-texts: --adapter closed_form learns from paired text; give --fit-texts FILE

`--adapter` says how A's layer-k states reach B's width at layer j, per (k, j): `identity` (equal widths
only), `closed_form` (fitted on `--fit-texts` in one pass of both models, `--kind` procrustes / linear /
affine, `--ridge`), `trained` (`--train-steps` AdamW steps at `--lr` on `--fit-texts`, `--kind` any
trainable plain kind; `projection` is the seeds' learned projection), or the path of an adapter saved by
`stitch fit` / `stitch train`, used for every pair. The preflight checks the layers and widths against
the models' config.json before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stitch.cli.configs import check_layer_in
from stitch.cli.options import (
    ModelPairConfig,
    batch_size_option,
    check_float,
    check_int,
    flag,
    overwrite_option,
    path_option,
    progress_option,
)
from stitch.config import option
from stitch.kinds import (
    ADAPTER_METHODS,
    COMBINE_NAMES,
    COMMUNICATION_FIT_KINDS,
    CONDITIONS,
    DEFAULT_KIND,
    INJECT,
)
from stitch.kinds import (
    COMMUNICATION_TRAINED_KINDS as TRAINED_KINDS,
)

RIDGE_KINDS = ("linear", "affine")
OUTPUTS = ("records.jsonl", "summary.json", "report.html", "run.json")


@dataclass(frozen=True, kw_only=True)
class CommunicateConfig(ModelPairConfig):
    tasks: str = option(help="task file (.jsonl, see analyses.evaluation) or a shipped task: qa, math, mc, similarity")
    ks: tuple[int, ...] = option(help="A layers k to read")
    js: tuple[int, ...] = option(help="B layers j to write at")
    out: str = path_option("out_dir", help="output directory")
    adapter: str = path_option("adapter_method", "identity", help="per (k, j): identity (equal widths), "
                               "closed_form or trained (learned on --fit-texts), or a saved adapter for every pair")
    fit_texts: str | None = path_option("texts", None, help="paired text the closed_form / trained adapters "
                                        "learn from: one text per line, or .jsonl with a 'text' field")
    kind: str = option(DEFAULT_KIND, help=f"adapter kind: closed_form {', '.join(COMMUNICATION_FIT_KINDS)}; trained "
                       f"{', '.join(TRAINED_KINDS)} (projection: the seeds' learned projection)")
    ridge: float | None = option(None, help="closed_form linear/affine only: relative ridge (default 0)")
    train_steps: int | None = option(None, help="trained only: AdamW steps per (k, j) (default 100)")
    lr: float | None = option(None, help="trained only: learning rate (default 1e-3)")
    combine: str = option("replace", choices=COMBINE_NAMES, help="how A's state meets B's own")
    positions: tuple[int, ...] = option((-1,), help="B prompt token indices written (-1 = last)")
    source_positions: tuple[int, ...] = option((-1,), help="A prompt token indices read, one per position (or one)")
    inject: str = option("prompt", choices=INJECT, help="write on the prompt pass only, or also every generated token")
    conditions: tuple[str, ...] = option(CONDITIONS, help=f"conditions to run: {', '.join(CONDITIONS)}")
    max_new_tokens: int = option(16, help="tokens B generates per example")
    limit: int | None = option(None, help="use only the first N examples")
    batch_size: int = batch_size_option(help="examples generated together")
    n_boot: int = option(1000, help="bootstrap resamples for the intervals")
    seed: int = option(0, help="seed of the random control, the trained adapters and the bootstrap")
    progress: bool = progress_option()
    overwrite: bool = overwrite_option()

    def __post_init__(self):
        super().__post_init__()
        if self.adapter is None:  # an earlier YAML's `adapter: null`
            object.__setattr__(self, "adapter", "identity")
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad:
            raise ValueError(f"{flag('conditions')}: got {bad}; valid: {list(CONDITIONS)}")
        for name in ("max_new_tokens", "batch_size", "n_boot"):
            check_int(self, name, 1)
        check_int(self, "limit", 1)
        if not self.ks or not self.js:
            raise ValueError(f"{flag('ks')} / {flag('js')}: give at least one layer each")
        for name in ("ks", "js"):
            bad = [x for x in getattr(self, name) if isinstance(x, bool) or not isinstance(x, int) or x < 0]
            if bad:
                raise ValueError(f"{flag(name)}: expected layers >= 0, got {bad}")
        if len(self.source_positions) not in (1, len(self.positions)):
            raise ValueError(f"{flag('source_positions')}: {len(self.source_positions)} indices for "
                             f"{len(self.positions)} positions; give one, or one per position")
        self._check_adapter()

    def method(self) -> str:
        """identity, closed_form, trained, or "saved" (`adapter` is a path)."""
        return self.adapter if self.adapter in ADAPTER_METHODS else "saved"

    def _check_adapter(self) -> None:
        method = self.method()
        if not isinstance(self.adapter, str) or not self.adapter.strip():
            raise ValueError(f"--adapter: expected {' / '.join(ADAPTER_METHODS)} or an adapter path, got {self.adapter!r}")
        learns = method in ("closed_form", "trained")
        if learns and self.fit_texts is None:
            raise ValueError(f"--fit-texts: --adapter {method} learns from paired text; give --fit-texts FILE")
        only = {"fit_texts": learns, "ridge": method == "closed_form",
                "train_steps": method == "trained", "lr": method == "trained"}
        for name, allowed in only.items():
            if getattr(self, name) is not None and not allowed:
                wanted = "closed_form or trained" if name == "fit_texts" else ("closed_form" if name == "ridge" else "trained")
                raise ValueError(f"{flag(name)}: only --adapter {wanted} takes it, got --adapter {self.adapter}")
        if self.kind != DEFAULT_KIND and not learns:
            raise ValueError(f"--kind: only --adapter closed_form or trained makes an adapter, got --adapter {self.adapter}")
        kinds = {"closed_form": COMMUNICATION_FIT_KINDS, "trained": TRAINED_KINDS}.get(method)
        if kinds is not None and self.kind not in kinds:
            raise ValueError(f"--kind: got {self.kind!r} for --adapter {method}; valid: {list(kinds)}")
        if self.ridge is not None and self.kind not in RIDGE_KINDS:
            raise ValueError(f"--ridge: only --kind linear or affine take a ridge penalty, got --kind {self.kind}")
        check_float(self, "ridge", 0.0)
        check_int(self, "train_steps", 1)
        check_float(self, "lr", 0.0, open_low=True)

    def outputs(self) -> list[Path]:
        return [Path(self.out) / name for name in OUTPUTS]

    def check_models(self, a, b) -> None:
        """Every k within A's depth, every j within B's, and a learned or saved adapter when widths differ."""
        for name, layers, shape, model in (("ks", self.ks, a, "--source-model"), ("js", self.js, b, "--target-model")):
            for layer in layers:
                check_layer_in(name, layer, shape.n_layers, model)
        if self.method() == "identity" and None not in (a.d_model, b.d_model) and a.d_model != b.d_model:
            raise ValueError(
                f"--adapter: identity needs equal widths (A {a.d_model}, B {b.d_model}); give closed_form or "
                "trained with --fit-texts, or a saved adapter"
            )
