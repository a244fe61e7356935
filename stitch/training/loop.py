"""The one training loop: gradient descent through the splice on weighted objectives; only the adapters learn.

    >>> config = TrainConfig(out="runs/l16", source_layer=16, kind="lowrank", adapter_options=("rank=64",),
    ...                      lr=1e-3, steps=2000, batch_size=32, eval_every=200, checkpoint_every=500)
    >>> result = train(A, B, train_texts, config, eval_texts=held_out)     # one process, or under torchrun
    >>> result.adapter, result.history[-1]["loss_recovered"]

Each step takes `batch_size` texts (over all ranks; each rank its contiguous share, `stitch.training.distributed`,
cut into `grad_accumulation` micro-batches), and for every layer pair and objective (`stitch.training.losses`)
backpropagates its share of the global mean (`stitch.training.step`): each objective's item losses summed on
the rank, divided by its item count over every rank and micro-batch. One coalesced all-reduce then sums the
gradients (`distributed.sum_gradients`): the full-batch gradient whatever the world size or accumulation, so a
run on 2 ranks follows the same path as a run on 1. Inputs come from the models every step, or from an
activation store (`cache`, `stitch.activations`) built once. AdamW, optional warm-up and decay, gradient
clipping; Procrustes adapters are re-orthogonalised after every step (`project_`). Every `eval_every` steps
each pair is scored by the one evaluator, probed (cosine, CKA), sampled (`samples`: greedy generations,
`stitch.training.samples`) and the best step so far exported to `OUT/best/`; `early_stopping_patience`
stops the run (`stitch.training.guide`). Rank 0 writes `OUT/adapter.safetensors` (`stitch.save_adapter`),
`OUT/metrics.jsonl` (`stitch.training.history`) and `OUT/checkpoints/` (`stitch.training.checkpoint`);
`resume=True` continues from the latest checkpoint bit-exactly (`stitch.training.resume`). The order of the
texts and the learning rate are functions of the step (`stitch.training.schedule`), so the step, the
adapter, the optimizer and the RNG are the whole state of a run.

Every step checks that the loss and every gradient are finite before the optimizer moves, and that the
adapter still is after: a NaN or infinity stops the run with a `NonFiniteError` naming the step and the
layer pair, before anything non-finite is written, so the last good checkpoint stays in force.
`metrics.jsonl` is strict JSON: a non-finite number is written as null and its key listed in "nonfinite".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from stitch.adapters import Adapter, Procrustes
from stitch.checks import check_texts
from stitch.chunks import corpus_texts
from stitch.losses import IGNORE
from stitch.models.hooked import HookedLM
from stitch.training import distributed
from stitch.training.checkpoint import latest_checkpoint, save_checkpoint
from stitch.training.config import TrainConfig, check_warmup
from stitch.training.evaluate import eval_references, evaluate_splices
from stitch.training.guide import EarlyStopping, evaluations
from stitch.training.history import RunHistory
from stitch.training.identity import run_id, run_identity
from stitch.training.inputs import training_inputs
from stitch.training.pairs import LayerPairs
from stitch.training.precision import precision_for
from stitch.training.probes import PairProbe, Similarity
from stitch.training.records import NonFiniteError, nonfinite, nonfinite_message
from stitch.training.resume import resume_from
from stitch.training.samples import generation_samples, sample_prompts
from stitch.training.schedule import TextOrder, learning_rate, micro_batches, steps_per_epoch
from stitch.training.sinks import open_sinks
from stitch.training.step import PairView, backward, pair_terms, step_backward


@dataclass
class TrainResult:
    """The trained adapter (an `AdapterGroup` with several pairs), the step reached, the records of
    `OUT/metrics.jsonl`, each pair's adapter by "N:M", and the best step (None without held-out texts)."""

    adapter: Adapter
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    adapters: dict[str, Adapter] = field(default_factory=dict)
    best_step: int | None = None
    stopped_early: bool = False

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
    similarity: Similarity | None = None,
    max_length: int | None = None,
    stride: int = 0,
) -> TrainResult:
    """Train the adapter of `config` from A's layer N to B's layer M on `texts`; see the module docstring.

    Under torchrun the process group is created from the environment (and destroyed at the end) unless a
    `dist` from `stitch.training.distributed.init()` is given. `metadata` goes into the saved adapter's record.
    `similarity(x, y) -> float` (e.g. `analyses.cka.linear_cka`) adds CKA before/after to each evaluation.
    `max_length=n` (or `config.max_length`) cuts training and held-out texts longer than n tokens of A or B
    into chunks cut at the same characters for both (`stitch.chunks`), with `stride` tokens of context.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a stitch.training.loop.TrainConfig, got {type(config).__name__}")
    if max_length is not None or stride:
        config = config.chunked(max_length, stride)
    tokenizers, window = [A.tokenizer, B.tokenizer], (config.max_length, config.stride)
    texts = corpus_texts(tokenizers, check_texts(texts), *window)
    eval_texts = None if eval_texts is None else corpus_texts(tokenizers, check_texts(eval_texts), *window)
    with distributed.session(dist) as dist:
        return _Run(A, B, texts, eval_texts, config, dist, metadata or {}, similarity).run()


__all__ = ["TrainConfig", "TrainResult", "backward", "learning_rate", "train"]


class _Run:
    """One training run: the layer pairs, the optimizer, the data order, the guide, and what rank 0 writes."""

    def __init__(self, A, B, texts, eval_texts, config: TrainConfig, dist, metadata, similarity):
        self.config, self.dist, self.texts, self.eval_texts = config, dist, texts, eval_texts
        self.A, self.B, self.similarity = A, B, similarity
        self.out = Path(config.out)
        per_epoch = steps_per_epoch(len(texts), config, dist)
        self.order = TextOrder(len(texts), config.batch_size, config.seed)
        self.total = config.steps or (config.epochs or 1) * per_epoch
        check_warmup(config.warmup, self.total)  # with --epochs the run's length is known only here
        self.directory = self.out / "checkpoints"
        checkpoint = latest_checkpoint(self.directory)
        torch.manual_seed(config.seed)  # the same on every rank; checkpoints carry the state on
        progress = config.progress and dist.is_main
        self.pairs = LayerPairs.build(A, B, config, texts, fit=checkpoint is None, progress=progress)
        distributed.broadcast_parameters(self.pairs.group, dist)
        self.terms = pair_terms(self.pairs.keys, self.pairs.weights, config.loss_objectives())
        self.optimizer = torch.optim.AdamW(self.pairs.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.precision = precision_for(config.autocast, A.device)
        self.rule = EarlyStopping(
            config.early_stopping_metric, config.early_stopping_patience, config.early_stopping_min_delta
        )
        self.metadata = {"source_model": A.name, "target_model": B.name, **metadata}
        self.identity = run_identity(config, texts)
        self.history = RunHistory(self.out)
        self._last_checkpoint = checkpoint
        self.step = 0
        if checkpoint is not None:
            self.step, records = resume_from(checkpoint, self.identity, self.pairs.group, self.optimizer,
                                             total=self.total, allowed=config.resume, directory=self.directory)  # fmt: skip
            self.history = RunHistory(self.out, records)
        self.inputs = training_inputs(
            A, B, texts, config, self.pairs.layers, [t.objective for t in self.terms], dist, progress
        )

    @property
    def adapter(self) -> Adapter:
        return self.pairs.group

    def run(self) -> TrainResult:
        config = self.config
        if self.dist.is_main and config.log_to:
            self.history.sinks = open_sinks(config.log_to, self.out, config.to_dict(), config.wandb_project)
        if self.eval_texts is not None:
            self.references = eval_references(self.pairs.splices, self.texts, self.dist, config.batch_size)
            self.probes = PairProbe.collect_all(
                self.A, self.B, self.eval_texts, self.pairs.layers, cka=self.similarity
            )
        if self.step == 0 and self.eval_texts is not None:
            self._evaluate()
        bar = tqdm(total=self.total, initial=self.step, desc="training adapter", unit="step",
                   disable=not (self.dist.is_main and config.progress))  # fmt: skip
        with bar:
            while self.step < self.total and not self.history.stopped():
                record = self._train_step()
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                self._after_step(record)
        self.history.close()
        return self._finish()

    def _train_step(self) -> dict[str, Any]:
        config, params = self.config, self.pairs.parameters()
        lr = learning_rate(self.step, self.total, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        mine = distributed.shard(self.order.indices(self.step), self.dist)
        micro = [self.inputs.prepare(part) for part in micro_batches(mine, config.grad_accumulation)]
        views = [[PairView(sp, mb) for sp in self.pairs.splices] for mb in micro]
        record = step_backward(self.terms, views, self.dist, self.precision)
        distributed.sum_gradients(params, self.dist)
        self.precision.unscale(self.optimizer)
        self._check_finite(record["loss"], "the gradient of", {n: p.grad for n, p in self._parameters()})
        norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip if config.grad_clip > 0 else math.inf)
        self.precision.step(self.optimizer)
        for adapter in {id(a): a for a in self.pairs.adapters}.values():
            if isinstance(adapter, Procrustes):
                adapter.project_()
        self._check_finite(record["loss"], "the adapter's", dict(self._parameters()))
        local = sum(int((v[0].labels != IGNORE).sum()) for v in views)
        tokens = int(distributed.all_reduce_sum([local], self.dist)[0])
        seconds = time.perf_counter() - start
        return {**record, "tokens": tokens, "lr": lr, "grad_norm": float(norm), "tokens_per_s": tokens / seconds}

    def _parameters(self):
        return ((n, p) for n, p in self.pairs.group.named_parameters() if p.requires_grad)

    def _check_finite(self, loss: float, what: str, tensors: dict[str, Tensor | None]) -> None:
        """Raise before a non-finite state can reach the optimizer, a checkpoint or the metrics. Every rank
        sees the same reduced loss and gradients, so every rank raises at the same step (no rank hangs)."""
        cause = nonfinite(loss, {f"{what} {name}": t for name, t in tensors.items()})
        if cause is None:
            return
        message = nonfinite_message(self.step + 1, self.pairs.layers, cause, self._last_checkpoint)
        self.history.log({"split": "train", "step": self.step + 1, "loss": loss, "error": message})
        if self.dist.is_main:
            self.history.write()
        raise NonFiniteError(message)

    def _after_step(self, record: dict[str, Any]) -> None:
        config, step = self.config, self.step
        if step % config.log_every == 0 or step == self.total:
            self.history.log({"split": "train", "step": step, **record})
        if self.eval_texts is not None and config.eval_every and step % config.eval_every == 0:
            self._evaluate()
        if config.checkpoint_every and (
            step % config.checkpoint_every == 0 or step == self.total or self.history.stopped()
        ):
            self._checkpoint()

    def _evaluate(self) -> None:
        config, several = self.config, self.pairs.several
        records = evaluate_splices(self.pairs.splices, self.eval_texts, self.dist, config.batch_size, self.references)
        for i, (key, sp, record) in enumerate(zip(self.pairs.keys, self.pairs.splices, records, strict=True)):
            record.update(self.probes[i].record(sp.adapter, self.similarity))
            self.history.log({"split": "eval", "step": self.step, **({"pair": key} if several else {}), **record})
            if self.dist.is_main and config.progress:
                values = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if _real(v))
                tqdm.write(f"step {self.step}{f' {key}' if several else ''}: {values}")
        if config.samples and self.dist.is_main:  # generation runs no collective: rank 0 alone
            self._samples()
        state = self._guide()
        if state.best_step == self.step and self.dist.is_main:
            self.pairs.save(self.out / "best", self._adapter_metadata(), self._evals_at(self.step), step=self.step)
        if state.stop:
            self.history.log({"split": "early_stop", "step": self.step, "best_step": state.best_step,
                              "metric": config.early_stopping_metric, "best": state.best_value,
                              "waited": state.waited})  # fmt: skip
        if self.dist.is_main:
            self.history.write()

    def _samples(self) -> None:
        prompts = sample_prompts(self.eval_texts, self.config.samples)
        for key, sp in zip(self.pairs.keys, self.pairs.splices, strict=True):
            samples = generation_samples(sp, prompts, self.config.sample_tokens)
            pair = {"pair": key} if self.pairs.several else {}
            self.history.log({"split": "samples", "step": self.step, **pair, "samples": samples})

    def _guide(self):
        weights = dict(zip(self.pairs.keys, self.pairs.weights, strict=True))
        return self.rule.replay(evaluations(self.history.records, self.config.early_stopping_metric, weights))

    def _evals_at(self, step: int) -> list[dict[str, Any]]:
        return self.history.evals_at(step, self.pairs.keys)

    def _checkpoint(self) -> None:
        self._last_checkpoint = self.directory / f"step-{self.step:08d}"  # every rank: for error messages
        if self.dist.is_main:
            state = {**self.identity, "history": self.history.records}
            options = dict(state=state, keep=self.config.keep_checkpoints, run=run_id(self.identity))
            save_checkpoint(
                self.directory, self.step, self.pairs.group, self.optimizer, **options, **self._adapter_metadata()
            )
            self.history.write()

    def _finish(self) -> TrainResult:
        if self.eval_texts is not None and not self.history.evaluated_at(self.step):
            self._evaluate()
        best = self._guide().best_step if self.eval_texts is not None else None
        if self.dist.is_main:
            evals = self._evals_at(self.step) or None
            self.pairs.save(self.out, self._adapter_metadata(), evals, step=self.step, best_step=best)
            self.history.write()
        distributed.barrier(self.dist)  # every rank returns once the artifacts exist
        adapters = dict(zip(self.pairs.keys, self.pairs.adapters, strict=True))
        records = list(self.history.records)
        return TrainResult(self.pairs.group, self.step, records, adapters, best, self.history.stopped())

    def _adapter_metadata(self) -> dict[str, Any]:
        (n, m), config = self.pairs.layers[0], self.config
        return {
            **self.metadata,
            "source_layer": n,
            "target_layer": m,
            "alignment": config.alignment,
            "kind": config.kind,
            "objectives": list(config.objectives),
            "train_config": config.to_dict(),
        }


def _real(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)
