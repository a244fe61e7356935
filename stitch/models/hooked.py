"""HookedLM: a Hugging Face causal LM with hook points on every residual-stream boundary.

    >>> A = stitch.load_model(hf_model, tokenizer=tok)
    >>> batch = A.encode(["some text", "more text"], padding_side="left")
    >>> res = A.residuals(batch, layers=[2, 4])          # runs blocks [0, 4) only
    >>> logits = A.run_from(res[4], 4, batch)            # runs blocks [4, L), final norm, unembedding
    >>> torch.allclose(logits, A.logits(batch))          # == the HF forward
    True

Nothing is reimplemented: every call is the HF forward, with blocks outside the requested range
skipped (`skip_blocks`) and the stream read, replaced or cut off at boundaries by scoped pre-hooks.
Analysis calls (`residuals`, `logits`, `run_with_cache`) run under `torch.no_grad()`; `run_from` builds a
graph only through a stream that requires grad (weights frozen for that call); `run_with_hooks` keeps the
caller's grad mode. `requires_grad` flags are never changed. A model sharded with `device_map` takes its
inputs on `device` (the embedding's), its stream at layer ℓ on `device_of(ℓ)`, and gives logits on
`output_device`.
Thread-safe: every call (and every `hooks()` scope) holds the HF model's re-entrant lock while its hooks
and skipped blocks are in place, so concurrent calls on one model run one after another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from stitch.alignment.spans import token_spans_batch
from stitch.batch import Batch, positions_from_mask, tokenizer_fingerprint
from stitch.checks import check_choice, check_layer, check_texts
from stitch.chunks import OVERFLOW, check_max_length, fit_to_length
from stitch.models.arch import ArchSpec, arch_for, get_module
from stitch.models.cache import ActivationCache
from stitch.models.conventions import TransformerLensConventions
from stitch.models.hooks import (
    HookFn,
    HookPoint,
    hook_names,
    hook_scope,
    layer_of,
    model_lock,
    skip_blocks,
)
from stitch.models.kv import KVCache, Step, cache_keyword
from stitch.models.placement import frozen_weights, module_device, transfer

Hooks = Sequence[tuple["str | Callable[[str], bool]", HookFn]]


class _Stop(Exception):
    """Raised at the boundary where a partial forward ends, so later blocks never run."""


class HookedLM(TransformerLensConventions):
    """A frozen-by-convention HF causal LM seen as layers 0..L of residual stream (see docs/design.md).

    TransformerLens conventions (`to_tokens`, `to_str_tokens`, `to_string`, `A(text, return_type=...)`,
    `cfg`) come from `stitch.models.conventions`."""

    def __init__(self, model: nn.Module, tokenizer, name: str | None = None):
        self.spec: ArchSpec = arch_for(model)
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.blocks = get_module(model, self.spec.blocks)
        self.n_layers = len(self.blocks)
        self.d_model = get_module(model, self.spec.embed).weight.shape[1]
        self.vocab_size = get_module(model, self.spec.embed).weight.shape[0]
        boundaries = [*self.blocks, get_module(model, self.spec.final_norm)]
        self.hook_points = {
            n: HookPoint(n, layer_of(n, self.n_layers), boundaries[layer_of(n, self.n_layers)])
            for n in hook_names(self.n_layers)
        }
        self._boundary = {p.index: p for p in self.hook_points.values() if p.name.endswith("pre")}
        self._boundary[self.n_layers] = self.hook_points[f"blocks.{self.n_layers - 1}.hook_resid_post"]

    def __repr__(self) -> str:
        return f"HookedLM({self.name!r}, family={self.spec.family}, n_layers={self.n_layers}, d_model={self.d_model})"

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's device (the only device, unless sharded with `device_map`)."""
        return module_device(get_module(self.model, self.spec.embed))

    def device_of(self, layer: int) -> torch.device:
        """Where the stream enters layer `layer`: block `layer`'s device (layer L: the final norm's)."""
        layer = check_layer("layer", layer, self.n_layers)
        return module_device(self._boundary[layer].module)

    @property
    def output_device(self) -> torch.device:
        """Where the logits come out: the unembedding's device."""
        return module_device(get_module(self.model, self.spec.unembed))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def n_ctx(self) -> int | None:
        config = self.model.config
        return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    # ---- tokenization -------------------------------------------------------------------------------

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        padding_side: str = "right",
        add_special_tokens: bool = True,
        max_length: int | None = None,
        overflow: str = "error",
        stride: int = 0,
    ) -> Batch:
        """Tokenize and pad texts, keeping the character span of every token (special tokens zero-width).

        A text longer than `max_length` tokens (default: the model's context) is refused (`overflow="error"`),
        cut to its first `max_length` tokens ("truncate"), or cut into several texts that fit ("chunk", each
        chunk after the first repeating `stride` tokens of context; see `stitch.chunks`): then the batch has
        one row per chunk and `batch.texts` holds the chunks.
        """
        texts = check_texts(texts)
        check_choice("padding_side", padding_side, ("right", "left"))
        check_choice("overflow", overflow, OVERFLOW)
        limit = max_length if max_length is not None else self.n_ctx
        if max_length is not None or stride:
            check_max_length(max_length if max_length is not None else self.n_ctx or 0, stride)
        encoded = token_spans_batch(self.tokenizer, texts, add_special_tokens)
        if limit is not None:
            texts, encoded = fit_to_length(
                self.tokenizer, texts, encoded, limit, overflow, stride, add_special_tokens,
                None if max_length is not None else f"the model's {limit} positions",
            )
        batch = _pad(texts, encoded, self.pad_token_id, padding_side, self.device)
        return dataclasses.replace(batch, tokenizer_fingerprint=self.tokenizer_fingerprint)

    @property
    def tokenizer_fingerprint(self) -> str | None:
        """The fingerprint `encode` stamps on its batches (see `stitch.batch.tokenizer_fingerprint`)."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None or cached[0] is not self.tokenizer:  # recomputed if the tokenizer is swapped
            cached = self.__dict__["_fingerprint"] = (self.tokenizer, tokenizer_fingerprint(self.tokenizer))
        return cached[1]

    @property
    def pad_token_id(self) -> int:
        """The tokenizer's pad id, else EOS, else 0: padding is masked, so any id inside the vocabulary will do."""
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None and 0 <= candidate < self.vocab_size:
                return candidate
        return 0

    def as_batch(self, batch: Batch | Tensor | str | Sequence[str]) -> Batch:
        """A Batch from texts, from a Batch, or from token ids `[pos]` / `[batch, pos]` (as TransformerLens takes).

        Batches built from ids carry no character spans (-1), so they cannot be aligned to another tokenizer.
        """
        if isinstance(batch, Batch):
            return batch
        if isinstance(batch, Tensor):
            return self._batch_from_ids(batch)
        return self.encode(batch)

    def _batch_from_ids(self, ids: Tensor) -> Batch:
        if ids.dim() not in (1, 2) or ids.dtype not in (torch.long, torch.int, torch.int32):
            raise ValueError(
                f"tokens: expected integer token ids of shape [pos] or [batch, pos], got "
                f"{ids.dtype} of shape {tuple(ids.shape)}"
            )
        ids = ids.long().view(-1, ids.shape[-1]).to(self.device)
        mask = torch.ones_like(ids)
        special = torch.isin(
            ids, torch.tensor(self.tokenizer.all_special_ids, dtype=torch.long, device=ids.device)
        )
        texts = self.tokenizer.batch_decode(ids.tolist())
        spans = torch.full((*ids.shape, 2), -1, dtype=torch.long, device=ids.device)
        return Batch(texts, ids, mask, positions_from_mask(mask), spans, special)

    # ---- partial forwards ---------------------------------------------------------------------------

    def residuals(
        self, batch: Batch | Sequence[str], layers: Sequence[int]
    ) -> dict[int, Float[Tensor, "batch pos d_model"]]:
        """The residual stream at each requested layer; runs blocks [0, max(layers)) and nothing else."""
        batch = self.as_batch(batch)
        if isinstance(layers, int) or len(layers) == 0:
            raise ValueError(
                f"layers: expected a non-empty list of layers in 0..{self.n_layers}, got {layers!r}"
            )
        layers = sorted({check_layer("layers", layer, self.n_layers) for layer in layers})
        captured: dict[int, Tensor] = {}
        hooks = [(self._boundary[layer], _capture(captured, layer)) for layer in layers]
        self._forward(batch, "residuals", hooks=hooks, stop=layers[-1])
        return captured

    def run_from(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        layer: int,
        batch: Batch | Sequence[str],
        *,
        fwd_hooks: Hooks = (),
    ) -> Float[Tensor, "batch pos vocab"]:
        """Logits from the stream `resid` at `layer`: blocks [layer, L), final norm and unembedding only.

        `resid` may be on any device (it is moved to `device_of(layer)`). A graph is built only when
        `resid` requires grad, and then only through it: the weights are frozen for this call.
        """
        batch = self.as_batch(batch)
        layer = check_layer("layer", layer, self.n_layers)
        self._check_resid(resid, batch)
        if resid.device != self.device_of(layer):  # a sharded model: the stream enters on block `layer`'s device
            resid = transfer(resid, self.device_of(layer))
        inject = (self._boundary[layer], lambda _, hook: resid.to(self.dtype))
        user = self._resolve(fwd_hooks)
        early = sorted({p.name for p, _ in user if p.index < layer})
        if early:
            raise ValueError(
                f"fwd_hooks: {early} are before layer {layer}, where run_from starts; they would never see the stream"
            )
        return self._forward(batch, "run_from", hooks=user, inject=inject, start=layer, grad=resid)

    def run_from_embeds(
        self, embeds: Float[Tensor, "batch pos d_model"], batch: Batch
    ) -> Float[Tensor, "batch pos vocab"]:
        """Logits with `embeds` given to the HF model as `inputs_embeds` (the embedding-injection baseline)."""
        self._check_resid(embeds, batch, "embeds")
        if embeds.device != self.device:
            embeds = transfer(embeds, self.device)
        return self._forward(batch, "run_from_embeds", inputs_embeds=embeds.to(self.dtype), grad=embeds)

    def forward_cached(
        self,
        kv: KVCache,
        step: Step,
        *,
        start: int = 0,
        stop: int | None = None,
        hooks=(),
        inject=None,
        inputs_embeds: Tensor | None = None,
    ) -> Float[Tensor, "batch vocab"] | None:
        """One cached forward of the tokens `step` adds, over blocks [start, stop); logits of its last column.

        >>> kv = KVCache.empty(B, batch_size=2)
        >>> last = B.forward_cached(kv, Step(ids, positions, valid))     # [batch, vocab]

        Positions and the 4D mask come from `kv` (see `stitch.models.kv`), never from HF's cache length;
        blocks below `start` are skipped and their cache layers stay empty. `inject` (a (point, fn) pair)
        runs ahead of every other hook at its boundary, as in `run_from`. With `stop` the forward ends at
        that boundary and returns None (read the stream there with `hooks`).
        """
        hooks = list(hooks)
        if stop is not None:
            hooks.append((self._boundary[stop], _raise_stop))
        inputs = {"input_ids": step.input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds.to(self.dtype)}
        inputs[cache_keyword(self.model)] = kv.cache
        out = None
        with (
            model_lock(self.model),
            _one_forward(self, "forward_cached"),
            skip_blocks(self.blocks[:start], f"forward_cached(start={start})"),
            hook_scope([inject] if inject else [], first=True),
            hook_scope(hooks),
        ):
            try:
                out = self.model(
                    **inputs, attention_mask=kv.mask(step), position_ids=step.positions, use_cache=True, logits_to_keep=1
                )
            except _Stop:
                pass
        kv.commit(step)
        return None if out is None else out.logits[:, -1]

    def logits(self, batch: Batch | Sequence[str]) -> Float[Tensor, "batch pos vocab"]:
        """The plain forward; equal to the HF model's logits on the same ids, mask and positions."""
        return self._forward(self.as_batch(batch), "logits")

    # ---- TransformerLens-style hooks ----------------------------------------------------------------

    def run_with_hooks(
        self, batch: Batch | Sequence[str], fwd_hooks: Hooks = ()
    ) -> Float[Tensor, "batch pos vocab"]:
        """Forward with `fwd_hooks = [(name or name filter, fn(tensor, hook))]`; hooks removed afterwards."""
        return self._forward(
            self.as_batch(batch), "run_with_hooks", hooks=self._resolve(fwd_hooks), grad=_USER_GRAD
        )

    def run_with_cache(
        self,
        batch: Batch | Sequence[str],
        names_filter: str | Sequence[str] | Callable | None = None,
        *,
        remove_batch_dim: bool = False,
        device=None,
        return_cache_object: bool = True,
        incl_bwd: bool = False,
    ) -> tuple[Float[Tensor, "batch pos vocab"], ActivationCache]:
        """Forward that also returns the stream at every hook point passing `names_filter` (default: all),
        in `hook_names` order, detached (as TransformerLens's); `remove_batch_dim=True` drops the batch
        dimension of a batch of one, `device` moves the cache, `return_cache_object=False` gives a dict."""
        if incl_bwd:
            raise ValueError("incl_bwd: backward hooks are not supported; read gradients with torch hooks")
        store: dict[str, Tensor] = {}
        named = [names_filter] if isinstance(names_filter, str) else names_filter
        for name in () if named is None or callable(named) else named:
            layer_of(name, self.n_layers)  # a misspelt name lists the valid ones, not an empty cache
        names = [n for n in self.hook_points if _passes(names_filter, n)]
        if callable(names_filter) and not names:
            raise ValueError(_no_match("names_filter", names_filter, self.n_layers))
        hooks = [(self.hook_points[n], _capture(store, n)) for n in names]
        logits = self._forward(self.as_batch(batch), "run_with_cache", hooks=hooks)
        cache = ActivationCache({n: store[n].detach() for n in names if n in store}, self.n_layers)
        cache = cache.remove_batch_dim() if remove_batch_dim else cache
        cache = cache if device is None else cache.to(device)
        return logits, cache if return_cache_object else dict(cache.cache_dict)

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        """Hook points by name, in forward order (`stitch.models.hooks.hook_names`), as TransformerLens names it."""
        return dict(self.hook_points)

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Hooks) -> Iterator[HookedLM]:
        """Hooks active for every forward of `self.model` inside the block; removed on exit, even on error.

        The block holds the model's lock: other threads' calls on this model wait until it ends.
        """
        hooks = self._resolve(fwd_hooks)
        with model_lock(self.model), hook_scope(hooks):
            yield self

    # ---- internals ----------------------------------------------------------------------------------

    def _resolve(self, fwd_hooks: Hooks) -> list[tuple[HookPoint, HookFn]]:
        resolved = []
        for name, fn in fwd_hooks:
            if callable(name):
                matched = [(p, fn) for n, p in self.hook_points.items() if name(n)]
                if not matched:  # a filter that matches nothing would make the hook a silent no-op
                    raise ValueError(_no_match("fwd_hooks", name, self.n_layers))
                resolved += matched
            else:
                layer_of(name, self.n_layers)  # raises listing valid names
                resolved.append((self.hook_points[name], fn))
        return resolved

    def _forward(
        self,
        batch: Batch,
        call: str,
        *,
        hooks=(),
        inject=None,
        start: int = 0,
        stop: int | None = None,
        inputs_embeds: Tensor | None = None,
        grad=None,
    ) -> Tensor | None:
        """HF forward over blocks [start, stop) (stop=None: to the logits) with `hooks` installed.

        `inject` runs ahead of every other hook at its boundary, those of an enclosing `hooks()` too,
        so they all see the injected stream; `call` names the public method in errors. `grad` is the
        injected stream: a graph is built through it alone (weights frozen for the call) when it requires
        grad; otherwise, and for every call without a stream, the forward runs under `no_grad`.
        """
        self._check_batch(batch)
        hooks = list(hooks)
        if stop is not None:
            hooks.append((self._boundary[stop], _raise_stop))
        inputs = (
            {"inputs_embeds": inputs_embeds} if inputs_embeds is not None else {"input_ids": batch.input_ids}
        )
        why = f"{call}(layer={start})"
        with (
            model_lock(self.model),
            _one_forward(self, call),
            _grad_mode(self.model, grad),
            skip_blocks(self.blocks[:start], why),
            hook_scope([inject] if inject else [], first=True),
            hook_scope(hooks),
        ):
            try:
                out = self.model(
                    **inputs,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    use_cache=False,
                )
            except _Stop:
                return None
        return out.logits

    def _check_batch(self, batch: Batch) -> None:
        own = self.tokenizer_fingerprint
        if batch.tokenizer_fingerprint not in (None, own) and own is not None:
            raise ValueError(
                f"batch: encoded by another tokenizer (fingerprint {batch.tokenizer_fingerprint}) than model "
                f"{self.name!r}'s ({own}); its ids would mean other tokens here. Encode the texts with "
                "this model's encode(), or pass token ids to build a batch from raw ids"
            )
        if batch.device != self.device:
            raise ValueError(
                f"batch: on device {batch.device} but model {self.name!r} is on {self.device}; "
                f"use batch.to({str(self.device)!r})"
            )
        ids = batch.input_ids[batch.attention_mask.bool()]
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.vocab_size)][0].item()
            raise ValueError(
                f"input_ids: token id {bad} is outside the model's vocabulary [0, {self.vocab_size}); "
                "was the batch encoded with another model's tokenizer?"
            )
        if self.n_ctx is not None and batch.shape[1] > self.n_ctx:
            raise ValueError(
                f"batch: {batch.shape[1]} positions exceed the model's {self.n_ctx} (valid: 1..{self.n_ctx})"
            )

    def _check_resid(self, resid: Tensor, batch: Batch, name: str = "resid") -> None:
        expected = (*batch.shape, self.d_model)
        if not isinstance(resid, Tensor) or tuple(resid.shape) != expected:
            got = tuple(resid.shape) if isinstance(resid, Tensor) else type(resid).__name__
            raise ValueError(f"{name}: expected shape [batch, pos, d_model] = {list(expected)}, got {got}")
        if not resid.is_floating_point():  # token ids or a mask passed by mistake would be cast silently
            raise TypeError(f"{name}: expected a floating-point stream, got {resid.dtype}")


_USER_GRAD = object()  # run_with_hooks: the caller's grad mode, as a plain HF forward would have


def _grad_mode(model: nn.Module, stream) -> contextlib.AbstractContextManager:
    """no_grad, unless the injected stream needs a graph (then only through it) or the caller decides."""
    if stream is _USER_GRAD:
        return contextlib.nullcontext()
    if isinstance(stream, Tensor) and stream.requires_grad and torch.is_grad_enabled():
        return frozen_weights(model)
    return torch.no_grad()


_in_forward = threading.local()  # {id(HF model): the HookedLM call running on this thread}


@contextlib.contextmanager
def _one_forward(lm: HookedLM, call: str) -> Iterator[None]:
    """Refuse a forward of a model started from inside one of its own forwards (i.e. from a hook).

    The outer call's hooks and its stop and skip points are installed on the same modules, so the
    inner forward would fire them again (recursion), stop at the outer call's layer (None), or skip
    the outer call's blocks: its result would be wrong whichever way it went.
    """
    running = _in_forward.__dict__.setdefault("calls", {})
    key = id(lm.model)
    if key in running:
        raise RuntimeError(
            f"{call}: called from inside a hook of {running[key]} on model {lm.name!r}; a model cannot "
            f"run a forward while one of its own forwards is in progress. Call {call} before or after "
            f"{running[key]} (or on a copy of the model)."
        )
    running[key] = call
    try:
        yield
    finally:
        del running[key]


def _no_match(name: str, names_filter, n_layers: int) -> str:
    return (
        f"{name}: the name filter {getattr(names_filter, '__name__', names_filter)!r} matches no hook "
        f"point, so its hook would never run; names are {hook_names(n_layers)[:2]} ... {hook_names(n_layers)[-1:]}"
    )


def _capture(store: dict, key) -> HookFn:
    def capture(resid: Tensor, hook: HookPoint) -> None:
        store[key] = resid

    return capture


def _raise_stop(resid: Tensor, hook: HookPoint) -> None:
    raise _Stop


def _passes(names_filter, name: str) -> bool:
    if names_filter is None:
        return True
    if isinstance(names_filter, str):
        return name == names_filter
    if callable(names_filter):
        return bool(names_filter(name))
    return name in names_filter


def _pad(texts, encoded, pad_id: int, side: str, device) -> Batch:
    """Stack per-text token ids and spans into padded tensors (spans of padding are (-1, -1))."""
    width = max(len(enc.ids) for enc in encoded)
    shape = (len(texts), width)
    ids, mask = torch.full(shape, pad_id, dtype=torch.long), torch.zeros(shape, dtype=torch.long)
    spans, byte_spans = (
        torch.full((*shape, 2), -1, dtype=torch.long),
        torch.full((*shape, 2), -1, dtype=torch.long),
    )
    special = torch.ones(shape, dtype=torch.bool)
    for row, enc in enumerate(encoded):
        n = len(enc.ids)
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        ids[row, cols] = torch.tensor(enc.ids, dtype=torch.long)
        mask[row, cols] = 1
        spans[row, cols] = torch.tensor(enc.spans, dtype=torch.long).view(n, 2)
        byte_spans[row, cols] = torch.tensor(enc.byte_spans, dtype=torch.long).view(n, 2)
        special[row, cols] = torch.tensor(enc.special, dtype=torch.bool)
    batch = Batch(texts, ids, mask, positions_from_mask(mask), spans, special, side, byte_spans)
    return batch.to(device)
