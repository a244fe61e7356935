"""`stitch generate`: B's continuations while it reads A's states through the splice.

    $ stitch generate --source-model meta-llama/Llama-3.1-8B --target-model mistralai/Mistral-7B-v0.3 \\
          --source-layer 16 --adapter runs/l16.safetensors --prompts prompts.txt --policy restitch \\
          --do-sample --top-p 0.9 --seed 0
    $ stitch generate --splice runs/l16 --prompts prompts.txt            # a saved splice: layers, adapter, models
    >>> run(GenerateConfig(source_model="a/", target_model="b/", source_layer=16, prompts="p.txt"))

Prints one JSON line per prompt, `{"prompt": ..., "continuation": ...}`; with `--out FILE.jsonl` also
writes them there, and this config beside it as `<stem>.config.yaml`. Policies: see `stitch.splice.policies`;
sampling controls as in `stitch.splice.generate` (greedy unless --do-sample).
"""

from __future__ import annotations

import json
import sys

from tqdm.auto import tqdm

import stitch
from stitch.adapters.io import read_adapter_record
from stitch.cli.common import (
    config_beside,
    load_models,
    load_splice,
    read_texts,
    save_run_config,
    write_jsonl,
)
from stitch.cli.generate_config import GenerateConfig
from stitch.cli.options import flag

__all__ = ["GenerateConfig", "run"]


def run(config: GenerateConfig) -> list[dict]:
    """Generate for every prompt, print (and optionally write) the records, and return them."""
    prompts = read_texts("prompts", config.prompts)
    splice = build_splice(config)
    records = []
    with tqdm(total=len(prompts), desc="generating", unit="prompt", disable=not config.progress) as bar:
        for start in range(0, len(prompts), config.batch_size):
            chunk = prompts[start : start + config.batch_size]
            continuations = splice.generate(chunk, config.max_new_tokens, config.policy, **config.sampling())
            for prompt, continuation in zip(chunk, continuations, strict=True):
                records.append({"prompt": prompt, "continuation": continuation})
                print(json.dumps(records[-1], ensure_ascii=False), flush=True)
            bar.update(len(chunk))
    if config.out is not None:
        write_jsonl(config.out, records)
        save_run_config(config, config_beside(config.out), splice.A, splice.B)
    return records


def build_splice(config: GenerateConfig) -> stitch.Splice:
    """The saved --splice, or one built from the models, layers and --adapter options."""
    if config.splice is not None:
        return load_splice(config)
    A, B = load_models(config)
    adapter = None if config.adapter is None else _load_adapter(config)
    # read onto the CPU; the Splice places it once, on B's side (`stitch.models.placement.adapter_on`)
    return stitch.Splice(A, B, config.source_layer, config.target_layer, adapter=adapter)


def _load_adapter(config: GenerateConfig):
    """The saved adapter; warns (does not refuse) when it was fitted for other layers than these."""
    meta = read_adapter_record(config.adapter).get("metadata", {})
    target_layer = config.source_layer if config.target_layer is None else config.target_layer
    fitted = (meta.get("source_layer"), meta.get("target_layer"))
    if None not in fitted and fitted != (config.source_layer, target_layer):
        print(
            f"warning: {flag('adapter')} {config.adapter} was fitted for layers {fitted[0]} → {fitted[1]}, "
            f"used here at {config.source_layer} → {target_layer}",
            file=sys.stderr,
        )
    return stitch.load_adapter(config.adapter)
