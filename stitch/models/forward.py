"""The one HF forward every HookedLM call makes: blocks skipped, hooks scoped, grad mode chosen, checked inputs.

    >>> logits = run_forward(lm, batch, "logits")                          # the plain forward
    >>> run_forward(lm, batch, "residuals", hooks=[(point, capture(store, 4))], stop=4)   # None: cut at 4
    >>> run_forward(lm, batch, "run_from", inject=(point, fn), start=4, grad=resid)

Everything a forward needs besides the model class: the model's lock, the refusal of re-entrant forwards,
`no_grad` unless an injected stream needs a graph (then through it alone, weights frozen for the call), the
blocks below `start` skipped, an injected stream ahead of every other hook, and a stop at `stop` (`Stop`).
`lm` is a `stitch.models.hooked.HookedLM`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from stitch.batch import Batch
from stitch.models.hooks import HookFn, HookPoint, hook_scope, model_lock, skip_blocks
from stitch.models.placement import frozen_weights


class Stop(Exception):
    """Raised at the boundary where a partial forward ends, so later blocks never run."""


def run_forward(
    lm,
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
    check_batch(lm, batch)
    inputs = (
        {"inputs_embeds": inputs_embeds} if inputs_embeds is not None else {"input_ids": batch.input_ids}
    )
    out = None
    with (
        forward_scope(lm, call, f"{call}(layer={start})", hooks=hooks, inject=inject, start=start, stop=stop),
        grad_mode(lm.model, grad),
    ):
        out = lm.model(
            **inputs,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )
    return None if out is None else out.logits


@contextlib.contextmanager
def forward_scope(lm, call: str, why: str, *, hooks=(), inject=None, start: int = 0,
                  stop: int | None = None) -> Iterator[None]:  # fmt: skip
    """What every forward of `lm` (plain or KV-cached) runs inside: the model's lock, no re-entrant forward
    (`call` names it), blocks below `start` skipped (`why` names the call in their error), `inject` ahead of
    every other hook, `hooks`, and a stop at boundary `stop`: the `Stop` it raises ends the block quietly."""
    hooks = list(hooks)
    if stop is not None:
        hooks.append((lm._boundary[stop], raise_stop))
    with (
        model_lock(lm.model),
        one_forward(lm, call),
        skip_blocks(lm.blocks[:start], why),
        hook_scope([inject] if inject else [], first=True),
        hook_scope(hooks),
    ):
        try:
            yield
        except Stop:
            pass


def check_batch(lm, batch: Batch) -> None:
    """Refuse a batch of another tokenizer, on another device, with ids outside the vocabulary, or too long."""
    own = lm.tokenizer_fingerprint
    if batch.tokenizer_fingerprint not in (None, own) and own is not None:
        raise ValueError(
            f"batch: encoded by another tokenizer (fingerprint {batch.tokenizer_fingerprint}) than model "
            f"{lm.name!r}'s ({own}); its ids would mean other tokens here. Encode the texts with "
            "this model's encode(), or pass token ids to build a batch from raw ids"
        )
    if batch.device != lm.device:
        raise ValueError(
            f"batch: on device {batch.device} but model {lm.name!r} is on {lm.device}; "
            f"use batch.to({str(lm.device)!r})"
        )
    ids = batch.input_ids[batch.attention_mask.bool()]
    if ids.numel() and (ids.min() < 0 or ids.max() >= lm.vocab_size):
        bad = ids[(ids < 0) | (ids >= lm.vocab_size)][0].item()
        raise ValueError(
            f"input_ids: token id {bad} is outside the model's vocabulary [0, {lm.vocab_size}); "
            "was the batch encoded with another model's tokenizer?"
        )
    if lm.n_ctx is not None and batch.shape[1] > lm.n_ctx:
        raise ValueError(
            f"batch: {batch.shape[1]} positions exceed the model's {lm.n_ctx} (valid: 1..{lm.n_ctx})"
        )


def check_resid(lm, resid: Tensor, batch: Batch, name: str = "resid") -> None:
    """Refuse a stream of the wrong shape for `batch` or of a non-floating dtype."""
    expected = (*batch.shape, lm.d_model)
    if not isinstance(resid, Tensor) or tuple(resid.shape) != expected:
        got = tuple(resid.shape) if isinstance(resid, Tensor) else type(resid).__name__
        raise ValueError(f"{name}: expected shape [batch, pos, d_model] = {list(expected)}, got {got}")
    if not resid.is_floating_point():  # token ids or a mask passed by mistake would be cast silently
        raise TypeError(f"{name}: expected a floating-point stream, got {resid.dtype}")


USER_GRAD = object()  # run_with_hooks: the caller's grad mode, as a plain HF forward would have


def grad_mode(model: nn.Module, stream) -> contextlib.AbstractContextManager:
    """no_grad, unless the injected stream needs a graph (then only through it) or the caller decides."""
    if stream is USER_GRAD:
        return contextlib.nullcontext()
    if isinstance(stream, Tensor) and stream.requires_grad and torch.is_grad_enabled():
        return frozen_weights(model)
    return torch.no_grad()


_in_forward = threading.local()  # {id(HF model): the HookedLM call running on this thread}


@contextlib.contextmanager
def one_forward(lm, call: str) -> Iterator[None]:
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


def capture(store: dict, key) -> HookFn:
    """A hook storing the stream it sees under `key`."""
    def captured(resid: Tensor, hook: HookPoint) -> None:
        store[key] = resid

    return captured


def raise_stop(resid: Tensor, hook: HookPoint) -> None:
    raise Stop
