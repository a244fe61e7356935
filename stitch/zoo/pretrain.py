"""Pre-training a small causal LM from scratch on a list of texts, on CPU, in minutes.

    >>> spec = ModelSpec(name="A", family="llama", tokenizer="byte_bpe", vocab_size=8192, n_layers=4, d_model=128)
    >>> tok = build_tokenizer(spec, corpus.train)
    >>> model, history = pretrain(spec, tok, corpus.train)       # history: [{"step", "loss", "lr"}, ...]
    >>> held_out_ce(model, tok, corpus.train, corpus.held_out)   # {"ce_native": .., "ce_context_free": ..}

AdamW with linear warm-up and cosine decay (to a tenth of the peak); the texts are packed end to end into
windows of `n_ctx` tokens and each step takes `batch_size` windows from a permutation fixed by the seed, so
a run is a pure function of its spec, its texts and the library versions. The context-free reference is the evaluator's own
(`stitch.splice.score.References`: B's add-one-smoothed unigram over its training labels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from stitch.checks import check_choice, check_range
from stitch.config import Config, option
from stitch.losses import IGNORE, token_cross_entropy
from stitch.splice.score import References
from stitch.testing import FAMILIES, tiny_model
from stitch.zoo.tokenizers import byte_level_bpe, sentencepiece_bpe

MAX_POSITIONS = 1024  # rotary positions cost no parameters: evaluation texts may be longer than n_ctx
TOKENIZERS = {"byte_bpe": byte_level_bpe, "sentencepiece_bpe": sentencepiece_bpe}


@dataclass(frozen=True, kw_only=True)
class ModelSpec(Config):
    """Everything that decides a pre-trained model besides its texts (checked on construction)."""

    name: str = option(help="a short name, e.g. A")
    family: str = option("llama", choices=FAMILIES, help="architecture family (stitch.testing.FAMILIES)")
    tokenizer: str = option("byte_bpe", choices=tuple(TOKENIZERS), help="tokenizer style")
    vocab_size: int = option(8192, help="tokenizer vocabulary")
    n_layers: int = option(4, help="decoder blocks")
    d_model: int = option(128, help="residual width")
    n_ctx: int = option(128, help="tokens per training window (texts are packed end to end)")
    steps: int = option(300, help="AdamW steps")
    batch_size: int = option(8, help="windows per step")
    lr: float = option(1e-2, help="peak learning rate")
    warmup: int = option(20, help="steps of linear warm-up")
    seed: int = option(0, help="seed of the init and of the order of the texts")

    def __post_init__(self):
        check_choice("family", self.family, FAMILIES)
        check_choice("tokenizer", self.tokenizer, tuple(TOKENIZERS))
        for name, low, high in (("vocab_size", 300, 1 << 20), ("n_layers", 1, 64), ("d_model", 8, 4096),
                                ("n_ctx", 8, 1 << 16), ("steps", 1, 10**7), ("batch_size", 1, 4096),
                                ("lr", 1e-7, 1.0), ("warmup", 0, 10**7), ("seed", 0, 2**31)):
            check_range(name, getattr(self, name), low, high)
        if self.d_model % 8:
            raise ValueError(f"d_model: got {self.d_model}; valid: a multiple of 8 (4 heads of even width)")


def build_tokenizer(spec: ModelSpec, texts: list[str]):
    """The tokenizer of `spec`, trained on `texts`."""
    return TOKENIZERS[spec.tokenizer](texts, spec.vocab_size)


def pretrain(spec: ModelSpec, tokenizer, texts: list[str], progress: bool = True):
    """(trained HF model in eval mode, loss history every 10 steps) for `spec` on `texts`."""
    windows = pack_windows(tokenizer(texts)["input_ids"], spec.n_ctx)
    model = tiny_model(spec.family, len(tokenizer), spec.n_layers, spec.d_model, n_ctx=max(MAX_POSITIONS, spec.n_ctx), seed=spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.98))
    generator = torch.Generator().manual_seed(spec.seed)
    epochs = math.ceil(spec.steps * spec.batch_size / len(windows))
    order = torch.cat([torch.randperm(len(windows), generator=generator) for _ in range(epochs)])
    history = []
    model.train()
    bar = tqdm(range(spec.steps), desc=f"pre-training {spec.name} ({spec.family})", unit="step", disable=not progress)
    for step in bar:
        batch = windows[order[step * spec.batch_size : (step + 1) * spec.batch_size]]
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, spec)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 10 == 0 or step == spec.steps - 1:
            history.append({"step": step + 1, "loss": loss.item(), "lr": _lr(step, spec)})
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval().requires_grad_(False), history


def pack_windows(rows: list[list[int]], n_ctx: int) -> torch.Tensor:
    """Every text's tokens (each starting with its BOS) laid end to end, cut into rows of n_ctx + 1 tokens.

    Packing wastes no compute on padding; a window may start inside a text, as in GPT-style pre-training.
    """
    flat = torch.tensor([t for row in rows for t in row], dtype=torch.long)
    n = (len(flat) - 1) // n_ctx
    if n < 1:
        raise ValueError(f"texts: {len(flat)} tokens in all, fewer than one window of n_ctx={n_ctx} + 1")
    return torch.stack([flat[i * n_ctx : i * n_ctx + n_ctx + 1] for i in range(n)])


@torch.no_grad()
def held_out_ce(model, tokenizer, train_texts: list[str], eval_texts: list[str], n_ctx: int = 256) -> dict:
    """Held-out CE of the model beside the context-free (unigram) reference, nats per token, same labels."""
    train = [row[:n_ctx] for row in tokenizer(train_texts)["input_ids"]]
    references = References.from_counts(_counts(train, len(tokenizer)), {})
    native = free = n = 0.0
    for start in range(0, len(eval_texts), 16):
        rows = [row[:n_ctx] for row in tokenizer(eval_texts[start : start + 16])["input_ids"]]
        logits, labels = _forward(model, rows, 0)
        mask = labels != IGNORE
        native += token_cross_entropy(logits, labels)[mask].sum().item()
        free -= references.unigram_log_probs[labels[mask]].sum().item()
        n += mask.sum().item()
    return {"ce_native": native / n, "ce_context_free": free / n, "n_tokens": int(n)}


def _counts(rows: list[list[int]], vocab_size: int) -> torch.Tensor:
    """Next-token label counts (every token after the first), as `label_counts` counts them on a batch."""
    flat = torch.tensor([t for row in rows for t in row[1:]], dtype=torch.long)
    return torch.bincount(flat, minlength=vocab_size).double()


def _forward(model, rows: list[list[int]], pad_id: int):
    """(logits, next-token labels) of right-padded `rows`."""
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    labels = torch.where(mask.bool(), input_ids, IGNORE)[:, 1:]
    labels = torch.cat([labels, torch.full((len(rows), 1), IGNORE)], dim=1)
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    return logits, labels


def _lr(step: int, spec: ModelSpec) -> float:
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
