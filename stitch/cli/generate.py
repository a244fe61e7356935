"""`stitch generate`: B's continuations while it reads A's states through the splice.

    $ stitch generate --source-model meta-llama/Llama-3.1-8B --target-model mistralai/Mistral-7B-v0.3 \\
          --source-layer 16 --adapter runs/l16.safetensors --prompts prompts.txt --policy restitch \\
          --do-sample --top-p 0.9 --seed 0
    >>> run(GenerateConfig(source_model="a/", target_model="b/", source_layer=16, prompts="p.txt"))

Prints one JSON line per prompt, `{"prompt": ..., "continuation": ...}`; with `--out FILE.jsonl` also
writes them there, and this config beside it as `<stem>.config.json`. Policies: see `stitch.splice.policies`;
sampling controls as in `stitch.splice.generate` (greedy unless --do-sample).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import stitch
from stitch.adapters.io import read_adapter_record
from stitch.cli.common import (
    ModelPairConfig,
    config_beside,
    flag,
    load_models,
    option,
    read_texts,
    save_config,
    source_layer_option,
    target_layer_option,
)
from stitch.files import write_atomic
from stitch.splice.generate import GenerationConfig
from stitch.splice.policies import POLICIES


@dataclass(frozen=True, kw_only=True)
class GenerateConfig(ModelPairConfig):
    source_layer: int = source_layer_option()
    prompts: str = option(help="prompt file: one prompt per line, or .jsonl with a 'text' field")
    target_layer: int | None = target_layer_option()
    adapter: str | None = option(None, help="adapter saved by `stitch fit` (default: identity)")
    policy: str = option("prompt", choices=tuple(POLICIES), help="which B positions read A's states")
    max_new_tokens: int = option(32, help="tokens to generate per prompt")
    do_sample: bool = option(False, help="sample instead of greedy decoding")
    temperature: float = option(1.0, help="sampling temperature (> 0)")
    top_k: int | None = option(None, help="sample among the k most likely tokens only")
    top_p: float | None = option(None, help="nucleus sampling: the smallest set with this much mass, in (0, 1]")
    seed: int | None = option(None, help="seed for the draws (reproducible sampling)")
    stop_strings: tuple[str, ...] = option((), help="stop a prompt once its continuation contains one of these")
    batch_size: int = option(8, help="prompts generated together")
    out: str | None = option(None, help="also write the continuations to this .jsonl file")


def run(config: GenerateConfig) -> list[dict]:
    """Generate for every prompt, print (and optionally write) the records, and return them."""
    if isinstance(config.batch_size, bool) or not isinstance(config.batch_size, int) or config.batch_size < 1:
        raise ValueError(f"{flag('batch_size')}: expected an integer >= 1, got {config.batch_size!r}")
    generation = _generation(config)  # checked before any model loads
    prompts = read_texts("prompts", config.prompts)
    A, B = load_models(config)
    adapter = None if config.adapter is None else _load_adapter(config).to(A.device)
    splice = stitch.Splice(A, B, config.source_layer, config.target_layer, adapter=adapter)
    records = []
    for start in range(0, len(prompts), config.batch_size):
        chunk = prompts[start : start + config.batch_size]
        continuations = splice.generate(chunk, config.max_new_tokens, config.policy, **generation)
        for prompt, continuation in zip(chunk, continuations, strict=True):
            records.append({"prompt": prompt, "continuation": continuation})
            print(json.dumps(records[-1], ensure_ascii=False), flush=True)
    if config.out is not None:
        write_atomic(config.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        save_config(config, config_beside(config.out))
    return records


def _generation(config: GenerateConfig) -> dict:
    """The sampling controls, validated by GenerationConfig (its errors name the field and valid range)."""
    controls = dict(do_sample=config.do_sample, temperature=config.temperature, top_k=config.top_k,
                    top_p=config.top_p, seed=config.seed, stop_strings=tuple(config.stop_strings))
    try:
        GenerationConfig(max_new_tokens=config.max_new_tokens, policy=config.policy, **controls)
    except (TypeError, ValueError) as err:
        field, _, rest = str(err).partition(":")
        raise ValueError(f"{flag(field)}:{rest}") from None
    return controls


def _load_adapter(config: GenerateConfig):
    """The saved adapter; warns (does not refuse) when it was fitted for other layers than these."""
    if not Path(config.adapter).exists():
        raise FileNotFoundError(f"{flag('adapter')}: no adapter at {config.adapter!r}")
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
