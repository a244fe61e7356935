"""Ranks: torchrun's environment, sharding, and DDP over the adapter. Two gloo processes on halves of a batch
with uneven token counts give the gradients of one process on the whole batch; a 2-rank training run equals
a 1-process run; only rank 0 writes; process groups are destroyed even on errors; `stitch train` runs under
torchrun. Every spawned process uses a free localhost port and a deadline, so nothing can hang the suite."""

import builtins
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
import yaml

import stitch
from stitch.adapters import build_adapter
from stitch.losses import IGNORE
from stitch.testing import CORPUS, byte_bpe_tokenizer, rotated_copy, tiny_model
from stitch.training import distributed
from stitch.training.distributed import Dist
from stitch.training.loop import TrainConfig, backward, train

TEXTS = [t for t in dict.fromkeys(CORPUS) if "\n" not in t]  # 5 texts, one per line in a file
BATCH = ["Hi", "The quick brown fox", CORPUS[1], CORPUS[3]]  # rank 0 gets far fewer tokens than rank 1
DEADLINE = 90  # seconds before a multi-process run is killed (a normal one takes ~15 s)


def models():
    tok = byte_bpe_tokenizer()
    hf = tiny_model("llama", vocab_size=len(tok), seed=5)
    return stitch.load_model(hf, tokenizer=tok), stitch.load_model(rotated_copy(hf, seed=6)[0], tokenizer=tok)


def perturbed_affine():
    """An Affine adapter away from the identity (identical in every process: a fixed seed)."""
    adapter = build_adapter("affine", d_source=32, d_target=32)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(11)))
    return adapter


def run_config(out, **extra):
    options = dict(source_layer=1, kind="affine", lr=1e-2, steps=3, batch_size=4, log_every=1,
                   eval_every=2, checkpoint_every=2, progress=False)  # fmt: skip
    return TrainConfig(out=str(out), **{**options, **extra})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def recording_writes(log: list):
    """Record every path this process creates, replaces or opens for writing."""
    real = {name: getattr(os, name) for name in ("replace", "rename", "mkdir", "open")}
    real_open = builtins.open

    def hook(name):
        def call(path, *args, **kwargs):
            flags = args[0] if name == "open" and args else os.O_WRONLY
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                log.append(f"{name} {os.fspath(path)}")
            return real[name](path, *args, **kwargs)

        return call

    def opener(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            log.append(f"open {file}")
        return real_open(file, mode, *args, **kwargs)

    try:
        for name in real:
            setattr(os, name, hook(name))
        builtins.open = opener
        yield log
    finally:
        for name, fn in real.items():
            setattr(os, name, fn)
        builtins.open = real_open


class Boom(Exception):
    pass


def worker(rank: int, world: int, ports: tuple[int, int], root: str) -> None:
    """One rank: group hygiene, the gradient of `backward` on its half, and a full training run."""
    torch.set_num_threads(1)
    root = Path(root)
    env = dict(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ.update(env, MASTER_PORT=str(ports[0]))
    with contextlib.suppress(Boom), distributed.session(timeout=timedelta(seconds=60)) as dist:
        assert tdist.is_initialized() and dist.owns_group and dist.world_size == world
        raise Boom  # an error inside the session still destroys the group
    assert not tdist.is_initialized()
    os.environ["MASTER_PORT"] = str(ports[1])
    dist = distributed.init(timeout=timedelta(seconds=60))
    try:
        A, B = models()
        adapter = perturbed_affine()
        sp = stitch.Splice(A, B, 1, adapter=distributed.wrap(adapter, dist))
        mine = distributed.shard(BATCH, dist)
        mean, count = backward(sp, mine, dist)
        local = int((sp(mine).labels != IGNORE).sum())
        grads = {name: p.grad.contiguous() for name, p in adapter.named_parameters()}
        safetensors.torch.save_file(grads, root / f"grads-{rank}.safetensors")
        (root / f"loss-{rank}.json").write_text(json.dumps([mean, count, local]))
        writes = []
        with recording_writes(writes):
            train(A, B, TEXTS, run_config(root / "ddp"), eval_texts=BATCH, dist=dist)
        (root / f"writes-{rank}.json").write_text(json.dumps(writes))
    finally:
        distributed.cleanup(dist)


def free_ports() -> tuple[int, int]:
    """Two different free localhost ports (one per process group the worker creates)."""
    ports = (free_port(), free_port())
    return ports if ports[0] != ports[1] else free_ports()


def spawn_two_ranks(root: Path) -> bool:
    """Run `worker` on 2 gloo ranks; False if they did not finish within DEADLINE (they are killed)."""
    context = mp.start_processes(
        worker, args=(2, free_ports(), str(root)), nprocs=2, join=False, start_method="spawn"
    )
    try:
        for _ in range(0, DEADLINE, 5):
            if context.join(timeout=5):
                return True
        return False
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


def run_within_deadline(command: list[str]) -> tuple[int, str] | None:
    """(return code, output) of `command`, or None if it ran past DEADLINE (its process group is killed)."""
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)  # fmt: skip
    try:
        output, _ = process.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return None
    return process.returncode, output


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The directory of a finished 2-rank run. A rendezvous that stalls (rarely, on a busy machine) is
    retried once on fresh ports; the assertions on what the ranks computed are unchanged."""
    for attempt in range(2):
        root = tmp_path_factory.mktemp(f"ddp{attempt}")
        if spawn_two_ranks(root):
            return root
    pytest.fail(f"2-rank run did not finish within {DEADLINE} s, twice")


def test_two_ranks_on_halves_give_the_full_batch_gradient(two_ranks):
    A, B = models()
    adapter = perturbed_affine()
    sp = stitch.Splice(A, B, 1, adapter=adapter)
    mean, count = backward(sp, BATCH, Dist())
    full = {name: p.grad.clone() for name, p in adapter.named_parameters()}
    losses = [json.loads((two_ranks / f"loss-{r}.json").read_text()) for r in range(2)]
    assert losses[0][2] * 2 < losses[1][2]  # uneven: a plain average of the ranks' means would be wrong
    for rank_mean, rank_count, _ in losses:
        assert rank_count == count and rank_mean == pytest.approx(mean, abs=1e-6)
    for rank in range(2):
        grads = safetensors.torch.load_file(two_ranks / f"grads-{rank}.safetensors")
        for name, g in full.items():
            torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=0)
    # sensitivity: weighting the two halves equally (the naive DDP mean of means) misses by far more
    adapter.zero_grad()
    for half in (BATCH[:2], BATCH[2:]):
        (sp(half).loss / 2).backward()
    assert max((p.grad - full[n]).abs().max().item() for n, p in adapter.named_parameters()) > 1e-3


def test_a_two_rank_run_equals_a_one_process_run(two_ranks, tmp_path):
    A, B = models()
    single = train(A, B, TEXTS, run_config(tmp_path / "one"), eval_texts=BATCH)
    ddp = stitch.load_adapter(two_ranks / "ddp")
    for name, value in single.adapter.state_dict().items():
        torch.testing.assert_close(ddp.state_dict()[name], value, atol=1e-6, rtol=0)
    history = [json.loads(line) for line in (two_ranks / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in history] == [(r["split"], r["step"]) for r in single.history]
    for mine, reference in zip(history, single.history, strict=True):
        for key in ("loss", "ce_spliced", "ce_native", "ce_no_information"):
            if key in reference:
                assert mine[key] == pytest.approx(reference[key], abs=1e-6), key
        assert mine.get("tokens") == reference.get("tokens")


def test_only_rank_zero_writes(two_ranks):
    writes = [json.loads((two_ranks / f"writes-{r}.json").read_text()) for r in range(2)]
    assert writes[1] == []
    written = " ".join(writes[0])
    for name in ("adapter.safetensors", "metrics.jsonl", "latest.json", "optimizer.safetensors"):
        assert name in written
    assert sorted(os.listdir(two_ranks / "ddp" / "checkpoints")) == [
        "latest.json",
        "step-00000002",
        "step-00000003",
    ]


def test_torchrun_runs_stitch_train(tmp_path):
    A, B = models()
    for name, model in (("a", A), ("b", B)):
        model.model.save_pretrained(tmp_path / name)
        model.tokenizer.save_pretrained(tmp_path / name)
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    options = run_config(tmp_path / "torchrun").to_dict()
    options.update(
        source_model=str(tmp_path / "a"), target_model=str(tmp_path / "b"), texts=str(tmp_path / "texts.txt")
    )
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({k: v for k, v in options.items() if v is not None}))
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "stitch.cli",
    ]
    command = [*argv, "train", "--config", str(tmp_path / "train.yaml")]
    finished = run_within_deadline(command) or run_within_deadline(command)  # one retry, as for two_ranks
    if finished is None:
        pytest.fail(f"torchrun did not finish within {DEADLINE} s, twice")
    returncode, output = finished
    assert returncode == 0, output[-3000:]
    single = train(A, B, TEXTS, run_config(tmp_path / "one"))
    ddp = stitch.load_adapter(tmp_path / "torchrun")
    for name, value in single.adapter.state_dict().items():
        torch.testing.assert_close(ddp.state_dict()[name], value, atol=1e-6, rtol=0)
    assert yaml.safe_load((tmp_path / "torchrun" / "config.yaml").read_text())["train_texts"] == str(
        tmp_path / "texts.txt"
    )


@pytest.mark.parametrize("n, world", [(4, 2), (5, 2), (7, 3), (2, 4)])
def test_shards_cover_the_items_in_order(n, world):
    shards = [distributed.shard(list(range(n)), Dist(rank=r, world_size=world)) for r in range(world)]
    assert sum(shards, []) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_one_process_needs_no_group():
    dist = Dist()
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap(module, dist) is module and distributed.unwrap(module) is module
    loss = torch.tensor(2.5, requires_grad=True)
    assert distributed.global_mean(loss, 4, dist) == (loss, 2.5, 4)
    assert distributed.all_reduce_sum([1.0, 2.0], dist).tolist() == [1.0, 2.0]
    assert distributed.env_ranks({}) is None


@pytest.mark.parametrize(
    "env, message",
    [
        ({"WORLD_SIZE": "0"}, r"WORLD_SIZE: expected an integer >= 1 \(set by torchrun\), got '0'"),
        ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, r"RANK: expected an integer \[0, 1\]"),
        ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK: expected an integer"),
        ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, "MASTER_ADDR, MASTER_PORT: not set"),
    ],
)
def test_bad_torchrun_environment_names_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        distributed.env_ranks(env)
