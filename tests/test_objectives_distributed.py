"""Objectives across 2 gloo ranks: the InfoNCE gradient through the all-gather equals the single-process
gradient on the concatenated batch, and 2 ranks train the same adapter as 1 with contrastive and
representation objectives (the launcher and deadline are those of test_distributed)."""

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.multiprocessing as mp

import stitch
from stitch.training import distributed
from stitch.training.distributed import Dist
from stitch.training.loop import TrainConfig, train
from stitch.training.losses import InfoNCE, SoftContrastive
from tests.test_distributed import DEADLINE, TEXTS, free_port, models

SIZES = (3, 7)  # uneven rows per rank


def rows(seed: int, n: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)


class Rows:
    """A view whose pairs are fixed rows mapped by `weight`: anchors = x @ W (the parameter), positives y."""

    def __init__(self, x, y, weight):
        self.x, self.y, self.weight = x, y, weight

    def pair_states(self, positions):
        return self.x @ self.weight, self.y


def weight():
    return torch.nn.Parameter(
        torch.eye(8) + 0.1 * torch.randn(8, 8, generator=torch.Generator().manual_seed(3))
    )


def run_config(out, **extra):
    options = dict(source_layer=1, kind="affine", lr=1e-2, steps=3, batch_size=4, log_every=1, progress=False,
                   objectives=("ce", "infonce:weight=0.5,temperature=0.1", "mse:weight=0.3"))  # fmt: skip
    return TrainConfig(out=str(out), **{**options, **extra})


def worker(rank: int, world: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    dist = distributed.init(timeout=timedelta(seconds=60))
    try:
        x, y = rows(rank, SIZES[rank])
        for objective in (InfoNCE(temperature=0.2), SoftContrastive(temperature=0.2, target_temperature=0.3)):
            w = weight()
            objective.loss_sum(Rows(x, y, w), dist).div(sum(SIZES)).backward()
            distributed.sum_gradients([w], dist)
            safetensors.torch.save_file({"grad": w.grad}, Path(root) / f"{objective.name}-{rank}.safetensors")
        A, B = models()
        train(A, B, TEXTS, run_config(Path(root) / "ddp"), dist=dist)
        (Path(root) / f"done-{rank}").write_text(json.dumps(True))
    finally:
        distributed.cleanup(dist)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    for attempt in range(2):
        root = tmp_path_factory.mktemp(f"obj{attempt}")
        context = mp.start_processes(worker, args=(2, free_port(), str(root)), nprocs=2, join=False,
                                     start_method="spawn")  # fmt: skip
        try:
            for _ in range(0, DEADLINE, 5):
                if context.join(timeout=5):
                    return root
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
    pytest.fail(f"2-rank run did not finish within {DEADLINE} s, twice")


@pytest.mark.parametrize(
    "objective", [InfoNCE(temperature=0.2), SoftContrastive(temperature=0.2, target_temperature=0.3)]
)
def test_the_gradient_through_the_all_gather_is_the_full_batch_gradient(two_ranks, objective):
    x, y = (torch.cat(parts) for parts in zip(*(rows(r, n) for r, n in enumerate(SIZES)), strict=True))
    w = weight()
    objective.loss_sum(Rows(x, y, w), Dist()).div(sum(SIZES)).backward()
    for rank in range(2):
        got = safetensors.torch.load_file(two_ranks / f"{objective.name}-{rank}.safetensors")["grad"]
        torch.testing.assert_close(got, w.grad, atol=1e-6, rtol=0)
    # sensitivity: negatives from this rank only (no all-gather) give another gradient
    local = weight()
    for r, n in enumerate(SIZES):
        objective.loss_sum(Rows(*rows(r, n), local), Dist()).div(sum(SIZES)).backward()
    assert (local.grad - w.grad).abs().max() > 1e-3


def test_two_ranks_train_the_same_adapter_as_one(two_ranks, tmp_path):
    A, B = models()
    single = train(A, B, TEXTS, run_config(tmp_path / "one"))
    ddp = stitch.load_adapter(two_ranks / "ddp")
    for name, value in single.adapter.state_dict().items():
        torch.testing.assert_close(ddp.state_dict()[name], value, atol=1e-5, rtol=0)
    history = [json.loads(line) for line in (two_ranks / "ddp" / "metrics.jsonl").read_text().splitlines()]
    for mine, reference in zip(history, single.history, strict=True):
        for key in ("ce", "infonce", "mse", "loss", "tokens"):
            assert mine[key] == pytest.approx(reference[key], abs=1e-5), key
