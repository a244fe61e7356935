"""`stitch fit`: a closed-form adapter from A's layer N to B's layer M, saved with `stitch.save_adapter`.

    $ stitch fit --source-model meta-llama/Llama-3.1-8B --target-model mistralai/Mistral-7B-v0.3 \\
          --source-layer 16 --kind affine --ridge 0.01 --texts train.txt --out runs/l16.safetensors
    >>> run(FitConfig(source_model="a/", target_model="b/", source_layer=16, texts="t.txt", out="l16/"))

`--out` is a `.safetensors` file (its adapter config goes beside it as `<stem>.json`, this command's
config as `<stem>.config.json`) or a directory (`adapter.safetensors`, `adapter_config.json`,
`config.json`). The adapter's metadata records the layers, the model names, the kind and this config.

    $ stitch fit ... --kind token_conditioned --window 2 --ridge 0.01   # also reads B's tokens since the boundary
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import stitch
from stitch.adapters import CLOSED_FORM, Adapter
from stitch.adapters.fit import fit_adapter
from stitch.cli.common import (
    ModelPairConfig,
    config_beside,
    load_models,
    option,
    read_texts,
    save_config,
    source_layer_option,
    target_layer_option,
)


@dataclass(frozen=True, kw_only=True)
class FitConfig(ModelPairConfig):
    source_layer: int = source_layer_option()
    texts: str = option(help="training text file: one text per line, or .jsonl with a 'text' field")
    out: str = option(help="adapter path: a .safetensors file or a directory")
    target_layer: int | None = target_layer_option()
    kind: str = option("procrustes", choices=CLOSED_FORM, help="closed-form adapter kind")
    ridge: float | None = option(
        None,
        help="relative ridge: a fraction of the fitted features' mean variance per dimension (linear, affine, "
        "token_conditioned; default 0)",
    )
    window: int | None = option(
        None, help="token_conditioned only: how many B tokens since the last shared boundary it reads (default 2)"
    )
    scale: bool | None = option(None, help="fit a global scale (procrustes only; default off)")
    translation: bool | None = option(None, help="fit a translation (procrustes only; default off)")
    drop_special: bool = option(True, help="leave BOS and other special tokens out of the fit")
    batch_size: int = option(8, help="texts per forward")
    progress: bool = option(True, help="show a progress bar")

    def fit_options(self) -> dict:
        """The options given to the fit itself (`fit_adapter` refuses those the kind does not take)."""
        options = {"ridge": self.ridge, "scale": self.scale, "translation": self.translation, "window": self.window}
        return {k: v for k, v in options.items() if v is not None}


def run(config: FitConfig) -> Adapter:
    """Fit the adapter on the texts, save it with its metadata and the config, and return it."""
    texts = read_texts("texts", config.texts)
    A, B = load_models(config)
    target_layer = config.source_layer if config.target_layer is None else config.target_layer
    adapter = fit_adapter(
        A,
        B,
        texts,
        config.source_layer,
        target_layer,
        kind=config.kind,
        batch_size=config.batch_size,
        drop_special=config.drop_special,
        progress=config.progress,
        **config.fit_options(),
    )
    weights = stitch.save_adapter(
        adapter,
        config.out,
        source_layer=config.source_layer,
        target_layer=target_layer,
        source_model=config.source_model,
        target_model=config.target_model,
        kind=adapter.kind,
        alignment="target",
        n_texts=len(texts),
        config=config.to_dict(),
    )
    out = Path(config.out)
    save_config(config, config_beside(out) if out.suffix == ".safetensors" else out / "config.json")
    print(f"wrote {weights}")
    return adapter
