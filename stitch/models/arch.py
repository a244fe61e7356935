"""One declarative row per architecture family: where the blocks, embeddings, final norm and unembedding live.

    >>> spec = arch_for(hf_model)          # ArchSpec(blocks="model.layers", ...)
    >>> blocks = get_module(hf_model, spec.blocks)

To support a new family, add a row to `ARCHITECTURES` keyed by the HF `config.model_type`; nothing else in
stitch knows about architectures.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ArchSpec:
    """Dotted module paths inside an HF `*ForCausalLM` model."""

    family: str
    blocks: str
    embed: str
    final_norm: str
    unembed: str = "lm_head"


_LLAMA_LIKE = dict(blocks="model.layers", embed="model.embed_tokens", final_norm="model.norm")

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", **_LLAMA_LIKE),
    "mistral": ArchSpec("mistral", **_LLAMA_LIKE),
    "mixtral": ArchSpec("mixtral", **_LLAMA_LIKE),
    "qwen2": ArchSpec("qwen2", **_LLAMA_LIKE),
    "qwen3": ArchSpec("qwen3", **_LLAMA_LIKE),
    "gemma": ArchSpec("gemma", **_LLAMA_LIKE),
    "gemma2": ArchSpec("gemma2", **_LLAMA_LIKE),
    "gemma3_text": ArchSpec("gemma3_text", **_LLAMA_LIKE),
    "olmo2": ArchSpec("olmo2", **_LLAMA_LIKE),
    "phi3": ArchSpec("phi3", **_LLAMA_LIKE),
    "gpt2": ArchSpec("gpt2", blocks="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f"),
    "gpt_neox": ArchSpec(
        "gpt_neox",
        blocks="gpt_neox.layers",
        embed="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
    ),
}


def arch_for(model: nn.Module) -> ArchSpec:
    """The spec of an HF causal LM, or a ValueError listing the supported families and how to add one."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"model: unsupported architecture model_type={model_type!r} ({type(model).__name__}); "
            f"supported: {sorted(ARCHITECTURES)}. To add one, register an ArchSpec naming its decoder blocks, "
            "embeddings, final norm and unembedding: stitch.models.arch.ARCHITECTURES['my_type'] = "
            "ArchSpec('my_type', blocks='model.layers', embed='model.embed_tokens', final_norm='model.norm')."
        )
    spec = ARCHITECTURES[model_type]
    for path in (spec.blocks, spec.embed, spec.final_norm, spec.unembed):
        get_module(model, path)  # fail now, naming the path, rather than mid-forward
    return spec


def get_module(root: nn.Module, path: str) -> nn.Module:
    """`root.a.b.c` for path "a.b.c", with an error naming the missing part."""
    module = root
    for part in path.split("."):
        if not hasattr(module, part):
            raise ValueError(f"model: {type(root).__name__} has no submodule {path!r} (missing {part!r})")
        module = getattr(module, part)
    return module
