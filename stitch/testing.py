"""Tiny random models and tokenizers built on the fly (no downloads), for the demo, tests and benchmarks.

>>> from stitch.testing import byte_bpe_tokenizer, tiny_model
>>> tok = byte_bpe_tokenizer(vocab_size=300)
>>> hf = tiny_model("llama", vocab_size=len(tok))
>>> A = stitch.load_model(hf, tokenizer=tok)
"""

from __future__ import annotations

import copy
import functools

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from stitch.losses import mean_cross_entropy, next_token_labels
from stitch.models.loading import load_model

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Researchers want to know whether two language models can read each other's hidden states.",
    "Stitching splices the residual stream of one model into another, mid-forward.",
    "Numbers like 3.14159 and 2026 appear, as do symbols: #, $, %, & and @.",
    "Tabs\tand\nnewlines, and   runs of spaces, are text too.",
    "Ünïcödé, café, naïve, 東京, 你好世界, emoji 🙂🚀 and combining e\u0301 marks.",
] * 4

FAMILIES = [
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "olmo2",
    "phi3",
    "gpt2",
    "gpt_neox",
]  # every family in stitch.models.arch.ARCHITECTURES


@functools.cache
def byte_bpe_tokenizer(vocab_size: int = 300, bos: bool = True) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE trained on CORPUS, with <s>/</s> and (optionally) a BOS added to every text."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def _config(family: str, vocab_size: int, n_layers: int, d_model: int, n_ctx: int):
    common = dict(
        vocab_size=vocab_size,
        num_hidden_layers=n_layers,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_attention_heads=4,
        max_position_embeddings=n_ctx,
    )
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab_size,
            n_layer=n_layers,
            n_embd=d_model,
            n_head=4,
            n_positions=n_ctx,
            bos_token_id=0,
            eos_token_id=1,
        )
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(**common, rotary_pct=0.5)
    kv = dict(num_key_value_heads=2, bos_token_id=0, eos_token_id=1, pad_token_id=None)
    if family in ("gemma", "gemma2", "gemma3_text", "qwen3"):
        kv["head_dim"] = d_model // 4
    if family in ("gemma2", "gemma3_text"):  # a window shorter than the texts, so sliding layers differ
        kv.update(sliding_window=4, query_pre_attn_scalar=d_model // 4)
    if family == "mixtral":
        kv.update(num_local_experts=2, num_experts_per_tok=1)
    return _CONFIGS[family](**common, **kv)


_CONFIGS = {
    "llama": transformers.LlamaConfig,
    "mistral": transformers.MistralConfig,
    "mixtral": transformers.MixtralConfig,
    "qwen2": transformers.Qwen2Config,
    "qwen3": transformers.Qwen3Config,
    "gemma": transformers.GemmaConfig,
    "gemma2": transformers.Gemma2Config,
    "gemma3_text": transformers.Gemma3TextConfig,
    "olmo2": transformers.Olmo2Config,
    "phi3": transformers.Phi3Config,
}


def tiny_model(
    family: str = "llama",
    vocab_size: int = 300,
    n_layers: int = 3,
    d_model: int = 32,
    n_ctx: int = 128,
    seed: int = 0,
):
    """A random fp32 `*ForCausalLM` of `family` in eval mode, with eager-equivalent (SDPA) attention."""
    torch.manual_seed(seed)
    config = _config(family, vocab_size, n_layers, d_model, n_ctx)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


@torch.no_grad()
def fold_norm_gains(model) -> None:
    """Move every RMSNorm gain of a Llama-style model into the linear layers that read the normed stream.

    The function computed is unchanged; afterwards every norm gain is 1, so the residual basis can rotate.
    """
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for norm, readers in (
            (layer.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj)),
            (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj)),
        ):
            for lin in readers:
                lin.weight.mul_(norm.weight)
            norm.weight.fill_(1.0)
    model.lm_head.weight.mul_(model.model.norm.weight)
    model.model.norm.weight.fill_(1.0)


@torch.no_grad()
def rotate_residual(model, Q: torch.Tensor) -> None:
    """Rotate the residual basis, x -> x @ Q: embeddings, every reader (W @ Q) and every writer (Qᵀ @ W)."""
    model.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight @ Q)
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for reader in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            reader.weight.copy_(reader.weight @ Q)
        for writer in (attn.o_proj, mlp.down_proj):
            writer.weight.copy_(Q.T @ writer.weight)
    model.lm_head.weight.copy_(model.lm_head.weight @ Q)


def rotated_copy(model, seed: int = 0):
    """A copy of a Llama-style model (untied embeddings) computing the same function in a rotated basis.

    >>> rotated, Q = rotated_copy(hf_llama)         # layer-ℓ states of `rotated` = original's @ Q
    """
    d_model = model.config.hidden_size
    Q = torch.linalg.qr(torch.randn(d_model, d_model, generator=torch.Generator().manual_seed(seed)))[0]
    rotated = copy.deepcopy(model)
    fold_norm_gains(rotated)
    rotate_residual(rotated, Q)
    return rotated, Q


def train_briefly(model, tokenizer, texts, steps: int = 15, lr: float = 3e-2):
    """A few full-batch Adam steps of next-token loss on `texts`, so the model's states carry information."""
    batch = load_model(model, tokenizer=tokenizer).encode(texts)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        logits = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits
        opt.zero_grad()
        mean_cross_entropy(logits, next_token_labels(batch)).backward()
        opt.step()
    return model.eval().requires_grad_(False)


def peak_torch_cpu_bytes(fn) -> tuple[int, object]:
    """(peak bytes held by torch CPU tensors above the start, fn's result) while `fn()` runs.

    >>> peak, _ = peak_torch_cpu_bytes(lambda: layer_similarity(A, B, texts, measure="minibatch_cka"))

    Read from the profiler's allocation events (torch's own accounting, not the process RSS), so what
    Python or other threads allocate does not blur it.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak, result
