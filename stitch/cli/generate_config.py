"""The config of `stitch generate` (torch-free, like every config of `stitch.cli.configs`).

    >>> GenerateConfig(source_model="a/", target_model="b/", prompts="p.txt", source_layer=16, top_p=1.5)
    ValueError: --top-p: expected a number in (0, 1], got 1.5
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stitch.cli.configs import TEXTS_HELP, check_models_given, check_splice_layers
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
from stitch.config import option
from stitch.kinds import POLICIES


@dataclass(frozen=True, kw_only=True)
class GenerateConfig(ModelPairConfig):
    source_model: str | None = model_option("source", None)
    target_model: str | None = model_option("target", None)
    prompts: str = path_option("texts", help=f"prompt file: {TEXTS_HELP}")
    splice: str | None = path_option("splice", None, help="a splice saved with Splice.save_pretrained "
                                     "(layers, adapter, alignment, injection and the models)")
    source_layer: int | None = source_layer_option(None)
    target_layer: int | None = target_layer_option()
    adapter: str | None = path_option("adapter", None, help="adapter saved by `stitch fit` (default: identity)")
    policy: str = option("prompt", choices=POLICIES, help="which B positions read A's states")
    max_new_tokens: int = option(32, help="tokens to generate per prompt")
    do_sample: bool = option(False, help="sample instead of greedy decoding")
    temperature: float = option(1.0, help="sampling temperature (> 0)")
    top_k: int | None = option(None, help="sample among the k most likely tokens only")
    top_p: float | None = option(None, help="nucleus sampling: the smallest set with this much mass, in (0, 1]")
    seed: int | None = option(None, help="seed for the draws (reproducible sampling)")
    stop_strings: tuple[str, ...] = option((), help="stop a prompt once its continuation contains one of these")
    batch_size: int = batch_size_option(help="prompts generated together")
    out: str | None = path_option("out_file", None, help="also write the continuations to this .jsonl file")
    progress: bool = progress_option()
    overwrite: bool = overwrite_option()

    def __post_init__(self):
        super().__post_init__()
        check_models_given(self)
        if self.splice is not None:
            for name in ("source_layer", "target_layer", "adapter"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{flag(name)}: the saved --splice already holds it; give one or the other")
        elif self.source_layer is None:
            raise ValueError("--source-layer: required (or give --splice DIR, a saved splice)")
        check_int(self, "source_layer", 0)
        check_int(self, "target_layer", 0)
        check_int(self, "max_new_tokens", 1)
        check_int(self, "batch_size", 1)
        check_float(self, "temperature", 0.0, open_low=True)
        check_int(self, "top_k", 0)
        check_float(self, "top_p", 0.0, open_low=True)
        if self.top_p is not None and self.top_p > 1:
            raise ValueError(f"--top-p: expected a number in (0, 1], got {self.top_p}")
        check_int(self, "seed", 0)
        for i, text in enumerate(self.stop_strings):
            if not isinstance(text, str) or not text:
                raise ValueError(f"--stop-strings: expected non-empty strings, got {text!r} at position {i}")

    def sampling(self) -> dict:
        """The sampling controls, as `Splice.generate` takes them."""
        return dict(do_sample=self.do_sample, temperature=self.temperature, top_k=self.top_k,
                    top_p=self.top_p, seed=self.seed, stop_strings=tuple(self.stop_strings))  # fmt: skip

    def outputs(self) -> list[Path]:
        if self.out is None:
            return []
        return [Path(self.out), config_beside(self.out)]

    def check_models(self, a, b) -> None:
        check_splice_layers(self, a, b)
        if self.splice is None and self.adapter is None and None not in (a.d_model, b.d_model) and a.d_model != b.d_model:
            raise ValueError(
                f"--adapter: required when the widths differ (A {a.d_model}, B {b.d_model}); "
                "without one the identity is used, which needs equal widths"
            )
