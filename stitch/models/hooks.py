"""Hook points on residual-stream boundaries, installed only inside scopes and always removed.

    >>> def double(resid, hook):
    ...     return 2 * resid                       # return None to leave the stream unchanged
    >>> logits = A.run_with_hooks(batch, fwd_hooks=[("blocks.3.hook_resid_pre", double)])
    >>> with A.hooks([("blocks.3.hook_resid_pre", double)]):
    ...     out = A.model(**inputs)                  # any forward inside the block is hooked

Layer ℓ < L is the input of block ℓ; layer L is the input of the final norm. Every hook is a forward
pre-hook on that boundary module, registered by `hook_scope` and removed in its `finally`. A hook that
never fired by the end of a clean scope is an error: it usually means the forward stopped early.

Hooks and skipped blocks are state on shared modules, so every scope that installs them holds the model's
re-entrant lock (`model_lock`): threads sharing a model take turns, the thread holding the lock may call
the model again, and no thread ever sees another's hooks or skipped blocks.
"""

from __future__ import annotations

import contextlib
import re
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from stitch.models.placement import module_device

HookFn = Callable[[Tensor, "HookPoint"], "Tensor | None"]

_NAME = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")
FINAL = "ln_final.hook_in"  # TransformerLens's name for the stream entering the final norm: layer L


@dataclass(eq=False)
class HookPoint:
    """A named residual-stream boundary, TransformerLens-style (`hook.name`, `hook.layer()`, `hook.ctx`)."""

    name: str
    index: int  # the stitch layer ℓ ∈ [0, L] whose stream this hook sees
    module: nn.Module
    ctx: dict = field(default_factory=dict)

    def layer(self) -> int:
        """The block index in the name, as TransformerLens's `HookPoint.layer()` returns it."""
        if not self.name.startswith("blocks."):
            raise ValueError(f"hook {self.name!r} is not inside a block, so it has no layer()")
        return int(self.name.split(".")[1])


def hook_names(n_layers: int) -> list[str]:
    """Every hook name in forward order, the order TransformerLens lists them (and `run_with_cache` keys):
    `blocks.0.hook_resid_pre`, `blocks.0.hook_resid_post`, `blocks.1.hook_resid_pre`, ..., `ln_final.hook_in`."""
    names = [f"blocks.{i}.hook_resid_{kind}" for i in range(n_layers) for kind in ("pre", "post")]
    return names + [FINAL]


def boundary_name(layer: int, n_layers: int) -> str:
    """The hook point whose stream is layer `layer`: `blocks.{layer}.hook_resid_pre`, or FINAL for layer L."""
    return FINAL if layer == n_layers else f"blocks.{layer}.hook_resid_pre"


def layer_of(name: str, n_layers: int) -> int:
    """The stitch layer a hook name sees: resid_pre of block i is layer i, resid_post is layer i + 1."""
    if name == FINAL:
        return n_layers
    match = _NAME.match(name) if isinstance(name, str) else None
    if match is None or int(match.group(1)) >= n_layers:
        valid = f"blocks.{{0..{n_layers - 1}}}.hook_resid_pre / hook_resid_post, or {FINAL}"
        raise ValueError(
            f"hook name: unknown hook point {name!r}; valid names are {valid}, "
            f"e.g. {hook_names(n_layers)[:2] + hook_names(n_layers)[-1:]}"
        )
    return int(match.group(1)) + (match.group(2) == "post")


def no_match(name: str, names_filter, n_layers: int) -> str:
    """The error for a name filter matching no hook point (its hook would silently never run)."""
    return (
        f"{name}: the name filter {getattr(names_filter, '__name__', names_filter)!r} matches no hook "
        f"point, so its hook would never run; names are {hook_names(n_layers)[:2]} ... {hook_names(n_layers)[-1:]}"
    )


def passes(names_filter, name: str) -> bool:
    """Whether hook `name` passes `names_filter` (None: all; a name; a predicate; a collection of names)."""
    if names_filter is None:
        return True
    if isinstance(names_filter, str):
        return name == names_filter
    if callable(names_filter):
        return bool(names_filter(name))
    return name in names_filter


def resolve_hooks(points: dict[str, HookPoint], fwd_hooks, n_layers: int) -> list[tuple[HookPoint, HookFn]]:
    """`[(name or name filter, fn)]` as `(HookPoint, fn)` pairs; unknown names and empty filters refused."""
    resolved = []
    for name, fn in fwd_hooks:
        if callable(name):
            matched = [(p, fn) for n, p in points.items() if name(n)]
            if not matched:  # a filter that matches nothing would make the hook a silent no-op
                raise ValueError(no_match("fwd_hooks", name, n_layers))
            resolved += matched
        else:
            layer_of(name, n_layers)  # raises listing valid names
            resolved.append((points[name], fn))
    return resolved


def _stream_arg(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_stream(args: tuple, kwargs: dict, new: Tensor) -> tuple[tuple, dict]:
    if args:
        return (new, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}


_running = threading.local()  # the hooks executing on this thread, to catch a hook re-entering itself


def _pre_hook(point: HookPoint, fn: HookFn, fired: list[int]):
    def hook(module, args, kwargs):
        _refuse_skipped(point, module)
        fired[0] += 1
        old = _stream_arg(args, kwargs)
        new = _call_once(point, fn, old)
        if new is None:
            return None
        _check_return(point, old, new, module)
        return _with_stream(args, kwargs, new.to(old.dtype))

    return hook


def _call_once(point: HookPoint, fn: HookFn, stream: Tensor):
    """`fn(stream, point)`, refusing a hook that fires again while it runs (its fn ran the same model)."""
    running = _running.__dict__.setdefault("hooks", set())
    key = (id(point), id(fn))
    if key in running:
        raise RuntimeError(
            f"hook {point.name}: fired again while it was running: its function ran a forward of the "
            "same model (a re-entrant call). Compute what the hook needs before or after the forward."
        )
    running.add(key)
    try:
        return fn(stream, point)
    finally:
        running.discard(key)


def _check_return(point: HookPoint, old: Tensor, new, module: nn.Module) -> None:
    # On a model sharded with device_map, the stream reaching block ℓ may still be on block ℓ-1's device
    # (accelerate moves it inside the block's forward): the block's own device is as good as the stream's.
    moved = isinstance(new, Tensor) and new.device != old.device and new.device != module_device(module)
    if not isinstance(new, Tensor) or new.shape != old.shape or moved:
        got = f"{tuple(new.shape)} on {new.device}" if isinstance(new, Tensor) else type(new).__name__
        raise ValueError(
            f"hook {point.name}: returned {got}; a hook must return None or a tensor of the "
            f"stream's shape {tuple(old.shape)} on {old.device}"
        )
    if not new.is_floating_point():  # an int/bool stream would be cast silently into nonsense
        raise TypeError(
            f"hook {point.name}: returned a {new.dtype} tensor; a hook must return None or a "
            f"floating-point tensor (the stream is {old.dtype})"
        )


def _refuse_skipped(point: HookPoint, module: nn.Module) -> None:
    # A skipped block passes its input through, so a hook there would see an earlier layer's stream.
    skipped = module.__dict__.get("forward")
    if isinstance(skipped, _Passthrough):
        raise RuntimeError(
            f"hook {point.name}: layer {point.index} is not computed by this forward ({skipped.why} "
            f"skips blocks [0, {skipped.start})), so the hook would see the wrong stream; hook layers "
            f">= {skipped.start} or run a full forward"
        )


@contextlib.contextmanager
def hook_scope(hooks: Sequence[tuple[HookPoint, HookFn]], *, first: bool = False) -> Iterator[None]:
    """Install `(point, fn)` pairs as forward pre-hooks; remove them all on exit, whatever happens.

    `first=True` puts them ahead of hooks already installed at the same points (a stream injected at
    a boundary must be what every other hook there sees).
    """
    handles, counters = [], []
    try:
        for point, fn in hooks:
            fired = [0]
            counters.append((point, fired))
            handles.append(
                point.module.register_forward_pre_hook(
                    _pre_hook(point, fn, fired), with_kwargs=True, prepend=first
                )
            )
        yield
    finally:
        for handle in handles:
            handle.remove()
    silent = sorted({p.name for p, fired in counters if fired[0] == 0})
    if silent:
        raise RuntimeError(
            f"hooks never fired: {silent}. The forward did not reach these hook points "
            "(stopped early, or a different module ran); a silent hook would be a no-op."
        )


_ABSENT = object()
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock of `model` (one per module, shared by every wrapper of it).

        >>> with model_lock(A.model):   # hold A for a sequence of hooked forwards
        ...     ...

    Re-entrant so that the holding thread may call the model again (e.g. from inside a hook).
    """
    with _LOCKS_GUARD:  # two threads asking at once must get the same lock
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def skip_blocks(blocks: Sequence[nn.Module], why: str = "this call") -> Iterator[None]:
    """Make `blocks` pass their residual stream through untouched, without computing anything.

    `why` names the call in the error a hook on a skipped block raises (it would see the wrong stream).
    """
    # Write the instance dict directly: TransformerLens bridge components forward setattr to the wrapped
    # HF module, and nnsight keeps a per-instance `forward` of its own that must come back afterwards.
    saved = [block.__dict__.get("forward", _ABSENT) for block in blocks]
    passthrough = _Passthrough(why, len(blocks))
    try:
        for block in blocks:
            block.__dict__["forward"] = passthrough
        yield
    finally:
        for block, forward in zip(blocks, saved, strict=True):
            if forward is _ABSENT:
                block.__dict__.pop("forward", None)
            else:
                block.__dict__["forward"] = forward


class _Passthrough:
    """A skipped block's forward: returns the stream it is given; remembers which call skips it."""

    def __init__(self, why: str, start: int):
        self.why, self.start = why, start

    def __call__(self, *args, **kwargs) -> Tensor:
        return _stream_arg(args, kwargs)
