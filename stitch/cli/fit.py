"""`stitch fit`: a closed-form adapter from A's layer N to B's layer M, saved with `stitch.save_adapter`.

    $ stitch fit --source-model meta-llama/Llama-3.1-8B --target-model mistralai/Mistral-7B-v0.3 \\
          --source-layer 16 --kind affine --ridge 0.01 --train-texts train.txt --out runs/l16.safetensors
    >>> run(FitConfig(source_model="a/", target_model="b/", source_layer=16, train_texts="t.txt", out="l16/"))

`--out` is a `.safetensors` file (its adapter config goes beside it as `<stem>.json`, this command's
config as `<stem>.config.yaml`) or a directory (`adapter.safetensors`, `adapter_config.json`,
`config.yaml`). The adapter's metadata records the layers, the model names, the kind and this config.

    $ stitch fit ... --kind token_conditioned --window 2 --ridge 0.01   # also reads B's tokens since the boundary
"""

from __future__ import annotations

from pathlib import Path

import stitch
from stitch.adapters import Adapter
from stitch.adapters.fit import fit_adapter
from stitch.cli.common import as_ran, config_beside, load_models, read_texts, save_run_config
from stitch.cli.configs import FitConfig

__all__ = ["FitConfig", "run"]


def run(config: FitConfig) -> Adapter:
    """Fit the adapter on the texts, save it with its metadata and the config, and return it."""
    texts = read_texts("train_texts", config.train_texts)
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
        config=as_ran(config, A, B).to_dict(),
    )
    out = Path(config.out)
    save_run_config(config, config_beside(out) if out.suffix == ".safetensors" else out / "config.yaml", A, B)
    print(f"wrote {weights}")
    return adapter
