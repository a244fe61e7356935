"""The one training loop: gradient descent on B's next-token loss through the splice; only the adapter learns.

    >>> config = TrainConfig(out="runs/l16", source_layer=16, kind="lowrank", adapter_options=("rank=64",),
    ...                      lr=1e-3, steps=2000, batch_size=32, eval_every=200, checkpoint_every=500)
    >>> result = train(A, B, train_texts, config, eval_texts=held_out)     # one process, or under torchrun
    >>> result.adapter, result.history[-1]["loss_recovered"]

Each step takes `batch_size` texts (over all ranks; each rank its contiguous share, `stitch.training.distributed`),
runs `Splice(A, B, ...)(texts)` and backpropagates the mean next-token CE over every rank's unmasked labels
(`stitch.losses.mean_cross_entropy` per rank, re-weighted by `distributed.global_mean`): the gradient is the
full-batch gradient whatever the world size, so a run on 2 ranks follows the same path as a run on 1.
AdamW, optional warm-up and decay, gradient clipping; Procrustes adapters are re-orthogonalised after every
step (`project_`). Rank 0 writes `OUT/adapter.safetensors` (`stitch.save_adapter`), `OUT/metrics.jsonl` and
`OUT/checkpoints/` (`stitch.training.checkpoint`); `resume=True` continues from the latest checkpoint bit-exactly.
The order of the texts is a pure function of (seed, epoch) and the learning rate of the step, so the
step, the adapter, the optimizer and the RNG are the whole state of a run.

Every step checks that the loss and every gradient are finite before the optimizer moves, and that the
adapter still is after: a NaN or infinity stops the run with a `NonFiniteError` naming the step and the
layer pair, before anything non-finite is written, so the last good checkpoint stays in force.
`metrics.jsonl` is strict JSON: a non-finite number is written as null and its key listed in "nonfinite".
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from stitch.adapters import (
    Adapter,
    Procrustes,
    build_adapter,
    save_adapter,
)
from stitch.adapters.fit import fit_adapter
from stitch.checks import check_layer, check_texts
from stitch.files import write_atomic
from stitch.losses import IGNORE, token_cross_entropy
from stitch.models.hooked import HookedLM
from stitch.splice.splice import Splice
from stitch.training import distributed
from stitch.training.checkpoint import latest_checkpoint, load_checkpoint, read_record, save_checkpoint
from stitch.training.config import TrainConfig, check_warmup
from stitch.training.evaluate import eval_references, evaluate
from stitch.training.records import NonFiniteError, nonfinite, strict_record


@dataclass
class TrainResult:
    """The trained adapter, the step reached, and the records of `OUT/metrics.jsonl`."""

    adapter: Adapter
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last_eval(self) -> dict[str, Any] | None:
        return next((r for r in reversed(self.history) if r["split"] == "eval"), None)


def train(
    A: HookedLM,
    B: HookedLM,
    texts,
    config: TrainConfig,
    *,
    eval_texts=None,
    dist: distributed.Dist | None = None,
    metadata: dict[str, Any] | None = None,
) -> TrainResult:
    """Train the adapter of `config` from A's layer N to B's layer M on `texts`; see the module docstring.

    Under torchrun the process group is created from the environment (and destroyed at the end) unless a
    `dist` from `stitch.training.distributed.init()` is given. `metadata` goes into the saved adapter's record.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a stitch.training.loop.TrainConfig, got {type(config).__name__}")
    texts = check_texts(texts)
    eval_texts = None if eval_texts is None else check_texts(eval_texts)
    with distributed.session(dist) as dist:
        return _Run(A, B, texts, eval_texts, config, dist, metadata or {}).run()


def backward(sp: Splice, texts: list[str], dist: distributed.Dist) -> tuple[float, int]:
    """Forward and backward of the splice on this rank's `texts`; returns (mean loss, tokens) over all ranks.

    The adapter's gradients equal those of one process on every rank's texts together (see
    `distributed.global_mean`), however unevenly the tokens are spread over the ranks.
    """
    out = sp(texts)
    count = int((out.labels != IGNORE).sum())
    # a share without labels backpropagates a zero through the adapter: DDP waits for every rank's backward
    local = out.loss if count else token_cross_entropy(out.logits, out.labels).sum()
    loss, mean, count = distributed.global_mean(local, count, dist)
    loss.backward()
    return mean, count


def learning_rate(step: int, total: int, config: TrainConfig) -> float:
    """The learning rate of step `step` (0-based) of `total`: linear warm-up, then the schedule."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, total - config.warmup)
    if config.schedule == "linear":
        return config.lr * (1.0 - progress)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.lr


class _Run:
    """One training run: the splices, the optimizer, the data order, and what rank 0 writes."""

    def __init__(self, A, B, texts, eval_texts, config: TrainConfig, dist, metadata):
        self.config, self.dist, self.texts, self.eval_texts = config, dist, texts, eval_texts
        self.out = Path(config.out)
        check_layer("source_layer", config.source_layer, A.n_layers)
        self.target_layer = _target_layer(config, B.n_layers)
        self.per_epoch = _steps_per_epoch(len(texts), config, dist)
        self.total = config.steps or (config.epochs or 1) * self.per_epoch
        check_warmup(config.warmup, self.total)  # with --epochs the run's length is known only here
        self.directory = self.out / "checkpoints"
        checkpoint = latest_checkpoint(self.directory)
        torch.manual_seed(config.seed)  # the same on every rank; checkpoints carry the state on
        self.adapter = self._initial_adapter(A, B, fit=checkpoint is None)
        layers = dict(
            source_layer=config.source_layer, target_layer=self.target_layer, alignment=config.alignment
        )
        self.eval_sp = Splice(A, B, adapter=self.adapter, **layers)
        self.train_sp = Splice(A, B, adapter=distributed.wrap(self.adapter, dist), **layers)
        self.optimizer = torch.optim.AdamW(
            self.adapter.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.metadata = {"source_model": A.name, "target_model": B.name, **metadata}
        self.history: list[dict[str, Any]] = []
        self._last_checkpoint = checkpoint
        self.step = 0 if checkpoint is None else self._resume(checkpoint)
        self._order: tuple[int, torch.Tensor] | None = None

    def run(self) -> TrainResult:
        self.references = (
            None if self.eval_texts is None
            else eval_references(self.eval_sp, self.texts, self.dist, self.config.batch_size)
        )
        if self.step == 0 and self.eval_texts is not None:
            self._evaluate()
        main = self.dist.is_main and self.config.progress
        bar = tqdm(
            total=self.total, initial=self.step, desc="training adapter", unit="step", disable=not main
        )
        with bar:
            while self.step < self.total:
                loss, tokens = self._train_step()
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                self._after_step(loss, tokens)
        return self._finish()

    def _train_step(self) -> tuple[float, int]:
        lr = learning_rate(self.step, self.total, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        mine = distributed.shard(self._step_texts(self.step), self.dist)
        loss, tokens = backward(self.train_sp, mine, self.dist)
        self._check_finite(loss, "the gradient of", {n: p.grad for n, p in self._parameters()})
        if self.config.grad_clip > 0:  # gradients are already reduced: every rank clips alike
            torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), self.config.grad_clip)
        self.optimizer.step()
        if isinstance(self.adapter, Procrustes):
            self.adapter.project_()
        self._check_finite(loss, "the adapter's", dict(self._parameters()))
        return loss, tokens

    def _parameters(self):
        return ((n, p) for n, p in self.adapter.named_parameters() if p.requires_grad)

    def _check_finite(self, loss: float, what: str, tensors: dict[str, Tensor | None]) -> None:
        """Raise before a non-finite state can reach the optimizer, a checkpoint or the metrics. Every rank
        sees the same reduced loss and gradients, so every rank raises at the same step (no DDP hang)."""
        cause = nonfinite(loss, {f"{what} {name}": t for name, t in tensors.items()})
        if cause is None:
            return
        config, last = self.config, self._last_checkpoint
        kept = f"the last good checkpoint, {last.name}, is kept" if last else "no checkpoint was written"
        message = (
            f"training step {self.step + 1} (source layer {config.source_layer} → target layer "
            f"{self.target_layer}): {cause}; stopped before anything non-finite was written ({kept}). "
            "Lower lr or grad_clip, or check the texts of this step (a changed config needs a new out directory)"
        )
        self.history.append(
            strict_record({"split": "train", "step": self.step + 1, "loss": loss, "error": message})
        )
        if self.dist.is_main:
            self._write_metrics()
        raise NonFiniteError(message)

    def _after_step(self, loss: float, tokens: int) -> None:
        config, step = self.config, self.step
        if step % config.log_every == 0 or step == self.total:
            lr = self.optimizer.param_groups[0]["lr"]
            self.history.append(
                strict_record({"split": "train", "step": step, "loss": loss, "tokens": tokens, "lr": lr})
            )
        if self.eval_texts is not None and config.eval_every and step % config.eval_every == 0:
            self._evaluate()
        if config.checkpoint_every and (step % config.checkpoint_every == 0 or step == self.total):
            self._checkpoint()

    def _step_texts(self, step: int) -> list[str]:
        """The texts of global step `step`: a slice of this epoch's permutation (a function of seed, epoch)."""
        epoch, index = divmod(step, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.texts), generator=generator))
        size = self.config.batch_size
        return [self.texts[i] for i in self._order[1][index * size : (index + 1) * size].tolist()]

    def _evaluate(self) -> None:
        record = evaluate(self.eval_sp, self.eval_texts, self.dist, self.config.batch_size, self.references)
        self.history.append(strict_record({"split": "eval", "step": self.step, **record}))
        if self.dist.is_main:
            self._write_metrics()
        if self.dist.is_main and self.config.progress:
            tqdm.write(
                f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items() if _real(v))
            )

    def _initial_adapter(self, A: HookedLM, B: HookedLM, fit: bool) -> Adapter:
        """The adapter before step 0 (no closed-form fit when a checkpoint will overwrite it anyway)."""
        config, options = self.config, self.config.options()
        if config.init == "fit" and fit:
            fit_texts = self.texts[: config.init_texts]  # every rank fits the same texts: no broadcast needed
            progress = config.progress and self.dist.is_main
            layers = (config.source_layer, self.target_layer)
            fit_options = config.fit_options()  # the adapter's structural options plus init_options (ridge)
            adapter = fit_adapter(A, B, fit_texts, *layers, config.kind, progress=progress, **fit_options)
        else:
            adapter = build_adapter(config.kind, d_source=A.d_model, d_target=B.d_model, **options)
        # on B's side, where the Splice runs it (B's device at layer M, for a sharded B too)
        return adapter.to(device=B.device_of(self.target_layer), dtype=torch.float32)

    def _resume(self, path: Path) -> int:
        if not self.config.resume:
            raise ValueError(
                f"resume: False, but {self.directory} holds checkpoints of an earlier run; resume it "
                "(resume=True) or choose a new out directory"
            )
        _check_same_run(path, read_record(path)["state"], self._identity())  # before loading: a clear diff
        record = load_checkpoint(path, self.adapter, self.optimizer)
        self.history = record["state"]["history"]
        return record["step"]

    def _identity(self) -> dict[str, Any]:
        """What a checkpoint must share with this run to continue it exactly."""
        digest = hashlib.sha256("\0".join(self.texts).encode()).hexdigest()
        return {"config": self.config.run_fields(), "texts_sha256": digest}

    def _run_id(self) -> str:
        """A digest of the run's identity: checkpoints of different runs never share a directory."""
        return hashlib.sha256(json.dumps(self._identity(), sort_keys=True).encode()).hexdigest()[:16]

    def _checkpoint(self) -> None:
        self._last_checkpoint = self.directory / f"step-{self.step:08d}"  # every rank: for error messages
        if self.dist.is_main:
            state = {**self._identity(), "history": self.history}
            options = dict(state=state, keep=self.config.keep_checkpoints, run=self._run_id())
            save_checkpoint(
                self.directory, self.step, self.adapter, self.optimizer, **options, **self._adapter_metadata()
            )
            self._write_metrics()

    def _finish(self) -> TrainResult:
        if self.eval_texts is not None and not (self.history and self.history[-1]["split"] == "eval"):
            self._evaluate()
        if self.dist.is_main:
            last = next((r for r in reversed(self.history) if r["split"] == "eval"), None)
            save_adapter(self.adapter, self.out, **self._adapter_metadata(), step=self.step, eval=last)
            self._write_metrics()
        distributed.barrier(self.dist)  # every rank returns once the artifacts exist
        return TrainResult(self.adapter, self.step, list(self.history))

    def _adapter_metadata(self) -> dict[str, Any]:
        return {
            **self.metadata,
            "source_layer": self.config.source_layer,
            "target_layer": self.target_layer,
            "alignment": self.config.alignment,
            "kind": self.config.kind,
            "train_config": self.config.to_dict(),
        }

    def _write_metrics(self) -> None:
        lines = "".join(json.dumps(record, allow_nan=False) + "\n" for record in self.history)
        write_atomic(self.out / "metrics.jsonl", lines)


def _steps_per_epoch(n_texts: int, config: TrainConfig, dist: distributed.Dist) -> int:
    if config.batch_size < dist.world_size:
        raise ValueError(
            f"batch_size: {config.batch_size} texts per step cannot be shared by {dist.world_size} ranks; "
            f"valid: batch_size >= {dist.world_size} (the world size)"
        )
    if n_texts < config.batch_size:
        raise ValueError(
            f"texts: {n_texts} training texts, fewer than batch_size={config.batch_size}; "
            "give more texts or a smaller batch_size"
        )
    return n_texts // config.batch_size  # full batches only: every step weighs the same number of texts


def _target_layer(config: TrainConfig, n_layers: int) -> int:
    if config.target_layer is None:
        return check_layer("target_layer (defaults to source_layer)", config.source_layer, n_layers)
    return check_layer("target_layer", config.target_layer, n_layers)


def _check_same_run(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    if saved.get("texts_sha256") != current["texts_sha256"]:
        raise ValueError(
            f"resume: the checkpoint {path} was trained on different texts; use a new out directory"
        )
    old, new = saved.get("config", {}), current["config"]
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in changed)
        raise ValueError(
            f"resume: the checkpoint {path} was written with a different config ({diffs}); "
            "use the same options, or a new out directory"
        )


def _real(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)
