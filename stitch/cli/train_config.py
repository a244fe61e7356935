"""The config of `stitch train` (torch-free): `TrainConfig`'s fields plus the models, texts and output.

    >>> TrainCommandConfig(source_model="a/", target_model="b/", source_layer=16, train_texts="t.txt",
    ...                    out="runs/t", pack=True)
    ValueError: max_tokens: --pack needs --max-tokens > 0
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stitch.cli.configs import check_splice_layers, eval_texts_option, train_texts_option
from stitch.cli.options import ModelPairConfig, path_option
from stitch.config import option
from stitch.training.config import TrainConfig


@dataclass(frozen=True, kw_only=True)
class TrainCommandConfig(TrainConfig, ModelPairConfig):
    out: str = path_option("resumable_dir", help="output directory: adapter, metrics.jsonl, checkpoints/ "
                           "(an earlier run there is resumed)")
    train_texts: str = train_texts_option()
    eval_texts: str | None = eval_texts_option(required=False)
    text_field: str = option("text", help="the field holding the text in .jsonl files and datasets")
    max_tokens: int = option(0, help="cut texts to at most this many tokens (0: keep them whole); the same as "
                             "--max-length, or with --pack the size texts are packed to (A's tokens)")
    pack: bool = option(False, help="join short texts up to --max-tokens of A's tokens (needs --max-tokens)")

    def __post_init__(self):
        ModelPairConfig.__post_init__(self)
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 0:
            raise ValueError(f"max_tokens: expected an integer >= 0, got {self.max_tokens!r}")
        if self.pack and not self.max_tokens:
            raise ValueError("max_tokens: --pack needs --max-tokens > 0")
        if self.pack and (self.stride or self.max_length is not None):
            raise ValueError("pack: --pack joins texts up to --max-tokens; it takes no --stride or --max-length")
        if self.max_tokens and not self.pack:  # --max-tokens N is --max-length N: one chunker (stitch.chunks)
            if self.max_length not in (None, self.max_tokens):
                raise ValueError(f"max_tokens: {self.max_tokens} and max_length: {self.max_length} differ; give one")
            object.__setattr__(self, "max_length", self.max_tokens)
        TrainConfig.__post_init__(self)

    def outputs(self) -> list[Path]:
        return []  # a rerun continues from the checkpoints: nothing here is clobbered

    def check_models(self, a, b) -> None:
        check_splice_layers(self, a, b)
        rank = self.options().get("rank")
        widths = [w for w in (a.d_model, b.d_model) if w is not None]
        if isinstance(rank, int) and widths and rank > min(widths):
            raise ValueError(
                f"--adapter-options: rank={rank} is above the models' width; valid: 1..{min(widths)} "
                f"(min(d_source, d_target); A {a.d_model}, B {b.d_model})"
            )
