"""The conventions TransformerLens users bring, on `HookedLM`: tokens, strings, calling the model, `cfg`.

    >>> A.to_tokens(["Hello world"])                   # [batch, pos] ids, BOS as the tokenizer adds it
    >>> A.to_str_tokens("Hello world")                 # ['<s>', 'Hello', ' world']
    >>> A.to_string(A.to_tokens("Hello world")[0])
    >>> A("Hello world", return_type="loss")           # mean next-token CE; "logits", "both" or None
    >>> A.cfg.n_layers, A.cfg.d_model, A.cfg.d_vocab, A.cfg.n_ctx

Arguments TransformerLens takes and stitch cannot honour are refused by name, never silently ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from stitch.batch import Batch
from stitch.checks import check_choice, check_texts
from stitch.losses import IGNORE, next_token_labels, token_cross_entropy

RETURN_TYPES = ("logits", "loss", "both", None)


@dataclass(frozen=True)
class HookedLMConfig:
    """A TransformerLens-style `cfg` summary of a HookedLM (read-only; the HF config is `A.model.config`)."""

    model_name: str
    family: str
    original_architecture: str
    n_layers: int
    d_model: int
    d_vocab: int
    n_ctx: int | None
    n_heads: int | None
    d_head: int | None
    d_mlp: int | None
    dtype: torch.dtype
    device: torch.device
    tokenizer_name: str | None
    default_prepend_bos: bool


class TransformerLensConventions:
    """Mixin of `HookedLM` (which supplies `tokenizer`, `encode`, `logits`, `n_ctx`, ... )."""

    @property
    def cfg(self) -> HookedLMConfig:
        config = self.model.config
        n_heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
        return HookedLMConfig(
            model_name=self.name,
            family=self.spec.family,
            original_architecture=(getattr(config, "architectures", None) or [type(self.model).__name__])[0],
            n_layers=self.n_layers,
            d_model=self.d_model,
            d_vocab=self.vocab_size,
            n_ctx=self.n_ctx,
            n_heads=n_heads,
            d_head=getattr(config, "head_dim", None) or (self.d_model // n_heads if n_heads else None),
            d_mlp=getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None),
            dtype=self.dtype,
            device=self.device,
            tokenizer_name=getattr(self.tokenizer, "name_or_path", None),
            default_prepend_bos=self._adds_bos(),
        )

    def to_tokens(
        self, input, prepend_bos: bool | None = None, padding_side: str | None = None,
        move_to_device: bool = True, truncate: bool = True,
    ) -> Tensor:  # fmt: skip
        """Token ids `[batch, pos]` of a text or texts, padded with the pad id (TransformerLens's `to_tokens`).

        `prepend_bos=None` keeps the tokenizer's own special tokens; False drops them; True needs a tokenizer
        that adds a BOS. `truncate` cuts texts to the model's `n_ctx` positions."""
        texts = check_texts(input)
        special = self._special_tokens(prepend_bos)
        side = "right" if padding_side is None else padding_side
        check_choice("padding_side", side, ("right", "left"))
        rows = [self.tokenizer(t, add_special_tokens=special)["input_ids"] for t in texts]
        if truncate and self.n_ctx is not None:
            rows = [row[: self.n_ctx] for row in rows]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        for i, row in enumerate(rows):
            cols = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[i, cols] = torch.tensor(row, dtype=torch.long)
        return ids.to(self.device) if move_to_device else ids

    def to_str_tokens(self, input, prepend_bos: bool | None = None, padding_side: str | None = None):
        """Each token as its own string: a list for one text or `[pos]` ids, a list of lists for several."""
        if isinstance(input, Tensor):
            if input.dim() == 2:
                return [self.to_str_tokens(row) for row in input]
            return [self.tokenizer.decode([int(t)]) for t in input.reshape(-1).tolist()]
        if isinstance(input, str):
            return self.to_str_tokens(self.to_tokens(input, prepend_bos, padding_side, move_to_device=False)[0])
        if isinstance(input, Sequence) and input and all(isinstance(t, int) for t in input):
            return self.to_str_tokens(torch.tensor(input))
        return [self.to_str_tokens(text, prepend_bos, padding_side) for text in check_texts(input)]

    def to_string(self, tokens) -> str | list[str]:
        """Decoded text of `[pos]` ids (a string) or `[batch, pos]` ids (a list of strings)."""
        tokens = torch.as_tensor(tokens)
        if tokens.dim() == 2:
            return [self.tokenizer.decode(row.tolist()) for row in tokens]
        if tokens.dim() != 1:
            raise ValueError(f"tokens: expected shape [pos] or [batch, pos], got {tuple(tokens.shape)}")
        return self.tokenizer.decode(tokens.tolist())

    def __call__(
        self, input, return_type: str | None = "logits", *, loss_per_token: bool = False,
        prepend_bos: bool | None = None, padding_side: str | None = None, **unsupported,
    ):  # fmt: skip
        """`A("text")`: logits `[batch, pos, vocab]`; `return_type="loss"` the mean next-token CE over real
        tokens (`loss_per_token=True`: `[batch, pos - 1]`, 0 where masked), "both" (logits, loss), None."""
        if unsupported:
            raise TypeError(
                f"HookedLM.__call__: {sorted(unsupported)} not supported; use A.residuals / A.run_from for "
                "partial forwards (stop_at_layer, start_at_layer) and A.run_with_hooks for hooks"
            )
        check_choice("return_type", return_type, RETURN_TYPES)
        batch = self._call_batch(input, prepend_bos, padding_side)
        logits = self.logits(batch)
        if return_type == "logits":
            return logits
        loss = self._loss(logits, batch, loss_per_token)
        return {"loss": loss, "both": (logits, loss), None: None}[return_type]

    def _call_batch(self, input, prepend_bos, padding_side) -> Batch:
        if isinstance(input, (Batch, Tensor)):
            if prepend_bos is not None or padding_side is not None:
                raise ValueError("prepend_bos, padding_side: only for text input; token ids are used as given")
            return self.as_batch(input)
        if prepend_bos is None:
            return self.encode(input, padding_side=padding_side or "right")
        return self.encode(input, padding_side=padding_side or "right", add_special_tokens=self._special_tokens(prepend_bos))

    def _loss(self, logits: Tensor, batch: Batch, per_token: bool) -> Tensor:
        labels = next_token_labels(batch)
        losses = token_cross_entropy(logits, labels)[:, :-1]
        if per_token:
            return losses
        n = (labels != IGNORE).sum()
        if n == 0:
            raise ValueError("input: no text has two tokens, so there is no next-token loss")
        return losses.sum() / n

    def _special_tokens(self, prepend_bos: bool | None) -> bool:
        if prepend_bos is True and not self._adds_bos():
            raise ValueError(
                f"prepend_bos: True, but the tokenizer of {self.name!r} adds no BOS; use None (its default) or False"
            )
        return prepend_bos is not False

    def _adds_bos(self) -> bool:
        bos = self.tokenizer.bos_token_id
        return bos is not None and self.tokenizer("a")["input_ids"][:1] == [bos]

