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

Pieces: tokenization (`encode`, `as_batch`) is `stitch.models.encoding`, the one HF forward every call
makes (grad mode, skipped blocks, scoped hooks, input checks) `stitch.models.forward`, TransformerLens
conventions `stitch.models.conventions`; this module owns layers, devices and the public calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from stitch.batch import Batch
from stitch.checks import check_layer
from stitch.models.arch import ArchSpec, arch_for, get_module
from stitch.models.cache import ActivationCache
from stitch.models.conventions import TransformerLensConventions
from stitch.models.encoding import Tokenization
from stitch.models.forward import USER_GRAD, capture, check_resid, forward_scope, run_forward
from stitch.models.hooks import (
    HookFn,
    HookPoint,
    hook_names,
    hook_scope,
    layer_of,
    model_lock,
    no_match,
    passes,
    resolve_hooks,
)
from stitch.models.kv import KVCache, Step, cache_keyword
from stitch.models.placement import module_device, returns_to_input_device, transfer

Hooks = Sequence[tuple["str | Callable[[str], bool]", HookFn]]


class HookedLM(Tokenization, TransformerLensConventions):
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
        """Where the logits come out: the unembedding's device, or the inputs' (`device`) when the model is
        dispatched by accelerate, which moves the whole model's outputs back to where its inputs were."""
        if returns_to_input_device(self.model):
            return self.device
        return module_device(get_module(self.model, self.spec.unembed))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def n_ctx(self) -> int | None:
        config = self.model.config
        return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

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
        hooks = [(self._boundary[layer], capture(captured, layer)) for layer in layers]
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
        check_resid(self, resid, batch)
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
        check_resid(self, embeds, batch, "embeds")
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
        inputs = {"input_ids": step.input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds.to(self.dtype)}
        inputs[cache_keyword(self.model)] = kv.cache
        out = None
        why = f"forward_cached(start={start})"
        with forward_scope(self, "forward_cached", why, hooks=hooks, inject=inject, start=start, stop=stop):
            out = self.model(
                **inputs, attention_mask=kv.mask(step), position_ids=step.positions, use_cache=True, logits_to_keep=1
            )
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
            self.as_batch(batch), "run_with_hooks", hooks=self._resolve(fwd_hooks), grad=USER_GRAD
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
        names = [n for n in self.hook_points if passes(names_filter, n)]
        if callable(names_filter) and not names:
            raise ValueError(no_match("names_filter", names_filter, self.n_layers))
        hooks = [(self.hook_points[n], capture(store, n)) for n in names]
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
        return resolve_hooks(self.hook_points, fwd_hooks, self.n_layers)

    def _forward(self, batch: Batch, call: str, **kwargs) -> Tensor | None:
        return run_forward(self, batch, call, **kwargs)
