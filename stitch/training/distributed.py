"""The one place in stitch that knows about ranks: process group, sharding, reductions, DDP, rank-0 output.

    >>> with session() as dist:                     # torchrun env vars → a process group; else one process
    ...     mine = shard(texts, dist)                # this rank's contiguous slice
    ...     total, count = all_reduce_sum([loss_sum, n_tokens], dist).tolist()
    ...     model = wrap(adapter, dist)              # DistributedDataParallel, or the adapter itself
    ...     if dist.is_main:
    ...         write_atomic("out/metrics.json", ...)

Launch with `torchrun` (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); without those
variables everything runs in one process and no collective is ever called. The backend is NCCL when CUDA
is available, else gloo. A process group stitch created is destroyed in `finally`; one that already
existed (the caller's) is used and left alone.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")
# no buffer sync in forward: an evaluation forward on one rank must not wait for the others (the option
# was renamed in torch 2.13; the old name still works, with a FutureWarning)
_NO_FORWARD_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Dist:
    """Where this process stands: rank, world size, local rank, its device, and who owns the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # stitch created the process group, so stitch destroys it

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that logs, draws progress bars and writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def env_ranks(env: Mapping[str, str] = os.environ) -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun's variables; None when WORLD_SIZE is unset."""
    if "WORLD_SIZE" not in env:
        return None
    world = _env_int(env, "WORLD_SIZE", 1, None)
    rank = _env_int(env, "RANK", 0, world - 1)
    local = _env_int(env, "LOCAL_RANK", 0, None)
    if world > 1:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
        if missing:
            raise ValueError(
                f"{', '.join(missing)}: not set, but WORLD_SIZE={world}; launch with torchrun, which sets "
                f"{', '.join(ENV_VARS)}"
            )
    return rank, world, local


def _env_int(env: Mapping[str, str], name: str, low: int, high: int | None) -> int:
    text = env.get(name)
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = None
    if value is None or value < low or (high is not None and value > high):
        valid = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}: expected an integer {valid} (set by torchrun), got {text!r}")
    return value


def init(backend: str | None = None, timeout: timedelta = timedelta(minutes=30)) -> Dist:
    """Join (or create) the process group described by the environment; one process when there is none.

    `backend` defaults to "nccl" with CUDA, else "gloo"; each rank then uses `cuda:LOCAL_RANK` or the CPU.
    """
    if tdist.is_available() and tdist.is_initialized():  # the caller's group: use it, never destroy it
        rank, world = tdist.get_rank(), tdist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", 0))
        return Dist(rank, world, local, _device(local, tdist.get_backend()))
    ranks = env_ranks()
    if ranks is None or ranks[1] == 1:
        return Dist()
    rank, world, local = ranks
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    device = _device(local, backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    tdist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
    return Dist(rank, world, local, device, owns_group=True)


def _device(local_rank: int, backend: str) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors (CUDA ones too, via a copy)
    if backend == "nccl":
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def cleanup(dist: Dist) -> None:
    """Destroy the process group if stitch created it (safe to call twice)."""
    if dist.owns_group and tdist.is_initialized():
        tdist.destroy_process_group()


@contextlib.contextmanager
def session(dist: Dist | None = None, **init_kwargs) -> Iterator[Dist]:
    """`with session() as dist:` — `init(**init_kwargs)`, and `cleanup` in `finally`; a given `dist` is
    passed through untouched (its owner cleans it up)."""
    if dist is not None:
        yield dist
        return
    dist = init(**init_kwargs)
    try:
        yield dist
    finally:
        cleanup(dist)


def shard(items: Sequence[T], dist: Dist) -> list[T]:
    """This rank's contiguous share of `items` (sizes differ by at most one; ranks in order)."""
    n, world = len(items), dist.world_size
    return list(items[n * dist.rank // world : n * (dist.rank + 1) // world])


def all_reduce_sum(values: Sequence[float] | Tensor, dist: Dist) -> Tensor:
    """Element-wise sum over ranks, in float64 on the CPU (the values themselves when there is one rank)."""
    local = torch.as_tensor(values, dtype=torch.float64).detach().flatten()
    if not dist.is_distributed:
        return local.cpu()
    buffer = local.to(dist.device)
    tdist.all_reduce(buffer, op=tdist.ReduceOp.SUM)
    return buffer.cpu()


def global_mean(mean_loss: Tensor, n_tokens: int | Tensor, dist: Dist) -> tuple[Tensor, float, int]:
    """Turn this rank's mean loss over `n_tokens` tokens into the loss to call `backward()` on.

    Returns `(loss_for_backward, global_mean, global_tokens)`. DDP averages gradients over ranks, so each
    rank backpropagates `mean_loss · n_tokens · world_size / global_tokens`: after DDP's average the
    gradient is that of (Σ token losses over every rank) / (tokens over every rank), exactly what one
    process computes on the whole batch, however unevenly the tokens fall across ranks.
    """
    n_tokens = int(n_tokens)
    total, count = all_reduce_sum([mean_loss.detach().double().item() * n_tokens, n_tokens], dist).tolist()
    if count == 0:
        raise ValueError(
            f"labels: no next-token label on any of the {dist.world_size} rank(s) in this step; "
            "texts need at least two tokens to have a next token"
        )
    weight = n_tokens * dist.world_size / count
    loss = mean_loss if weight == 1.0 else mean_loss * weight
    return loss, total / count, int(count)


def wrap(module: nn.Module, dist: Dist) -> nn.Module:
    """DistributedDataParallel around `module` when there are several ranks, else `module` itself.

    Wrapping broadcasts rank 0's parameters, so every rank starts from the same weights.
    """
    if not dist.is_distributed:
        return module
    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, **_NO_FORWARD_SYNC)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def barrier(dist: Dist) -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if dist.is_distributed:
        tdist.barrier()


def all_gather_rows(rows: Tensor, dist: Dist) -> tuple[Tensor, int]:
    """Every rank's `rows` concatenated in rank order, differentiable; also where this rank's rows start.

    >>> everyone, offset = all_gather_rows(embeddings, dist)     # [sum of n_r, d]; mine at offset
    >>> everyone[offset : offset + len(embeddings)] is a view of my own rows' values

    Ranks may hold different numbers of rows (they are padded for the collective and trimmed). The
    backward sums every rank's gradient for each row and hands each rank its own rows' part, so a loss
    summed over ranks gets the gradient one process computes on the concatenated rows.
    """
    if not dist.is_distributed:
        return rows, 0
    counts = all_reduce_sum(_one_hot(rows.shape[0], dist), dist).long().tolist()
    if max(counts) == 0:
        return rows, 0
    return _GatherRows.apply(rows, counts, dist.device), sum(counts[: dist.rank])


def _one_hot(n: int, dist: Dist) -> list[float]:
    values = [0.0] * dist.world_size
    values[dist.rank] = float(n)
    return values


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: Tensor, counts: list[int], device: torch.device) -> Tensor:
        ctx.counts, ctx.rank = counts, tdist.get_rank()
        width = max(counts)
        padded = rows.new_zeros((width, *rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        buffers = [torch.empty_like(padded, device=device) for _ in counts]
        tdist.all_gather(buffers, padded.to(device).contiguous())
        return torch.cat([b[:n].to(rows.device) for b, n in zip(buffers, counts, strict=True)])

    @staticmethod
    def backward(ctx, grad: Tensor):
        # every rank's loss reads every rank's rows: the gradient of my rows is the sum over ranks
        grad = grad.contiguous().clone()
        tdist.all_reduce(grad, op=tdist.ReduceOp.SUM)
        start = sum(ctx.counts[: ctx.rank])
        return grad[start : start + ctx.counts[ctx.rank]], None, None


def sum_gradients(parameters: Sequence[nn.Parameter], dist: Dist) -> None:
    """Sum every parameter's gradient over ranks in one coalesced all-reduce (nothing to do in one process).

    The loop's per-rank losses are each rank's share of the global mean, so the sum is the full-batch
    gradient; one reduce per optimizer step however many micro-batches (and adapter calls) it took.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not dist.is_distributed or not grads:
        return
    flat = torch.cat([g.flatten() for g in grads]).to(dist.device)
    tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_parameters(module: nn.Module, dist: Dist) -> None:
    """Rank 0's parameters on every rank (what DDP does when it wraps a module)."""
    if not dist.is_distributed:
        return
    with torch.no_grad():
        for p in module.parameters():
            buffer = p.detach().to(dist.device).contiguous()
            tdist.broadcast(buffer, src=0)
            p.copy_(buffer.to(p.device))
