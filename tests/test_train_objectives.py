"""The loop's new features: cached and on-the-fly training give the same adapter, gradient accumulation is
exact, early stopping stops where a hand-simulated patience rule says (and the exported best is that step's),
three layer pairs write three adapters with per-pair records, a finished run extends, metrics carry tokens/s
and the gradient norm, optional loggers and CUDA autocast are called as they should be (recorders on CPU),
evaluations write greedy generation samples under the current adapter."""

import json
import sys
import types

import pytest
import torch

import stitch
import stitch.training.precision as precision_mod
from analyses.cka import linear_cka
from analyses.run_report import write_run_report
from stitch.testing import CORPUS, byte_bpe_tokenizer, rotated_copy, tiny_model
from stitch.training.config import TrainConfig
from stitch.training.loop import train

TEXTS = list(dict.fromkeys(CORPUS))


@pytest.fixture(scope="module")
def models():
    tok = byte_bpe_tokenizer()
    hf = tiny_model("llama", vocab_size=len(tok), seed=3)
    return stitch.load_model(hf, tokenizer=tok), stitch.load_model(rotated_copy(hf, seed=4)[0], tokenizer=tok)


def config(out, **overrides):
    base = dict(
        out=str(out), source_layer=1, kind="affine", lr=1e-2, batch_size=2, progress=False, log_every=1
    )
    return TrainConfig(**{**base, **overrides})


def same_adapter(a, b, atol):
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, atol=atol, rtol=0)


@pytest.mark.parametrize("cache", ["memory", "dir"])
def test_cached_and_on_the_fly_training_give_the_same_adapter(models, tmp_path, cache):
    A, B = models
    options = dict(epochs=3, objectives=("ce", "mse:weight=0.5"))
    live = train(A, B, TEXTS, config(tmp_path / "live", **options))
    where = "memory" if cache == "memory" else str(tmp_path / "cache")
    cached = train(A, B, TEXTS, config(tmp_path / "cached", cache=where, **options))
    assert live.step == cached.step == 9  # 3 epochs of 3 steps
    same_adapter(live.adapter, cached.adapter, atol=1e-6)
    assert abs(live.adapter.weight - torch.eye(32)).max() > 1e-3  # it did train
    if cache == "dir":
        assert (tmp_path / "cache" / "manifest.json").is_file()


def test_gradient_accumulation_equals_one_batch_k_times_larger(models, tmp_path):
    A, B = models
    big = train(A, B, TEXTS, config(tmp_path / "big", batch_size=6, steps=4, objectives=("ce", "cosine")))
    accumulated = train(A, B, TEXTS, config(tmp_path / "acc", batch_size=6, steps=4, grad_accumulation=3,
                                             objectives=("ce", "cosine")))  # fmt: skip
    same_adapter(big.adapter, accumulated.adapter, atol=1e-6)
    for one, other in zip(big.history, accumulated.history, strict=True):
        assert one["loss"] == pytest.approx(other["loss"], abs=1e-6) and one["tokens"] == other["tokens"]
    # sensitivity: the mean of the micro-batches' own means is a different (wrong) step
    halves = train(A, B, TEXTS, config(tmp_path / "one", batch_size=2, steps=4))
    assert (halves.adapter.weight - big.adapter.weight).abs().max() > 1e-4


def simulate_patience(values, patience, min_delta):
    """The patience rule written out by hand: (stop index or None, best index)."""
    best, best_i, bad = float("inf"), None, 0
    for i, v in enumerate(values):
        if v < best - min_delta:
            best, best_i, bad = v, i, 0
        else:
            bad += 1
            if bad >= patience:
                return i, best_i
    return None, best_i


def test_early_stopping_stops_where_the_patience_rule_says(models, tmp_path):
    A, B = models
    run = config(tmp_path / "es", lr=0.3, steps=40, eval_every=1, early_stopping_patience=2,
                 early_stopping_min_delta=2e-3, checkpoint_every=5)  # fmt: skip
    result = train(A, B, TEXTS, run, eval_texts=TEXTS[:3])
    evals = [r for r in result.history if r["split"] == "eval"]
    stop, best = simulate_patience([r["ce_spliced"] for r in evals], 2, 2e-3)
    assert stop is not None and result.stopped_early  # the held-out CE soon improves by less than 2e-3
    assert result.step == evals[stop]["step"] < 40
    assert result.best_step == evals[best]["step"]
    saved = stitch.load_adapter(tmp_path / "es" / "best")
    record = json.loads((tmp_path / "es" / "best" / "adapter_config.json").read_text())["metadata"]
    assert record["step"] == result.best_step
    spliced = stitch.Splice(A, B, 1, adapter=saved)(TEXTS[:3]).loss.item()
    assert spliced == pytest.approx(evals[best]["ce_spliced"], abs=1e-5)
    assert result.history[-1]["split"] == "early_stop" or any(
        r["split"] == "early_stop" for r in result.history
    )
    again = train(A, B, TEXTS, run, eval_texts=TEXTS[:3])  # resuming a stopped run does not train on
    assert again.step == result.step


def test_three_layer_pairs_write_three_adapters_and_per_pair_records(models, tmp_path):
    A, B = models
    run = config(tmp_path / "multi", source_layer=None, layer_pairs=("1:1", "2:2", "3:2"), pair_weights=(1, 0.5, 0.25),
                 steps=2, eval_every=2, objectives=("ce", "mse"))  # fmt: skip
    result = train(A, B, TEXTS, run, eval_texts=TEXTS[:2], similarity=linear_cka)
    for n, m in ((1, 1), (2, 2), (3, 2)):
        saved = stitch.load_adapter(tmp_path / "multi" / "pairs" / f"{n}-{m}")
        meta = json.loads((tmp_path / "multi" / "pairs" / f"{n}-{m}" / "adapter_config.json").read_text())[
            "metadata"
        ]
        assert (meta["source_layer"], meta["target_layer"]) == (n, m)
        same_adapter(result.adapters[f"{n}:{m}"], saved, atol=0)
    evals = [r for r in result.history if r["split"] == "eval"]
    assert sorted((r["step"], r["pair"]) for r in evals) == sorted(
        (s, p) for s in (0, 2) for p in ("1:1", "2:2", "3:2")
    )
    assert all({"cka_before", "cka_after", "cosine_after"} <= set(r) for r in evals)
    train_record = next(r for r in result.history if r["split"] == "train")
    assert {"1:1/ce", "2:2/mse", "3:2/ce"} <= set(train_record)
    total = sum(w * (train_record[f"{p}/ce"] + train_record[f"{p}/mse"])
                for p, w in (("1:1", 1), ("2:2", 0.5), ("3:2", 0.25)))  # fmt: skip
    assert train_record["loss"] == pytest.approx(total, rel=1e-9)
    assert train_record["grad_norm"] > 0 and train_record["tokens_per_s"] > 0
    shared = train(A, B, TEXTS, config(tmp_path / "shared", source_layer=None, layer_pairs=("1", "2"),
                                       shared_adapter=True, steps=1))  # fmt: skip
    assert (tmp_path / "shared" / "adapter.safetensors").is_file() and not (
        tmp_path / "shared" / "pairs"
    ).exists()
    assert shared.adapters["1:1"] is shared.adapters["2:2"]


def test_a_finished_run_extends_with_more_steps(models, tmp_path):
    A, B = models
    straight = train(A, B, TEXTS, config(tmp_path / "a", steps=6, checkpoint_every=2))
    train(A, B, TEXTS, config(tmp_path / "b", steps=4, checkpoint_every=2))
    extended = train(A, B, TEXTS, config(tmp_path / "b", steps=6, checkpoint_every=2))
    assert extended.step == 6
    same_adapter(straight.adapter, extended.adapter, atol=0)
    with pytest.raises(ValueError, match="beyond this run's 3 steps"):
        train(A, B, TEXTS, config(tmp_path / "b", steps=3, checkpoint_every=2))
    with pytest.raises(ValueError, match="lr: 0.01 → 0.02"):
        train(A, B, TEXTS, config(tmp_path / "b", steps=8, checkpoint_every=2, lr=2e-2))


def test_loggers_get_every_record(models, tmp_path, monkeypatch):
    A, B = models
    logged, scalars = [], []
    fake_wandb = types.SimpleNamespace(init=lambda **kw: types.SimpleNamespace(
        log=lambda values, step: logged.append((step, values)), finish=lambda: logged.append("finished")))  # fmt: skip

    class Writer:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, key, value, step):
            scalars.append((key, step))

        def close(self):
            scalars.append("closed")

    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    train(A, B, TEXTS, config(tmp_path / "log", steps=2, log_to=("wandb", "tensorboard"), eval_every=2),
          eval_texts=TEXTS[:2])  # fmt: skip
    assert [step for step, _ in logged[:-1]] == [0, 1, 2, 2] and logged[-1] == "finished"
    assert "train/loss" in logged[1][1] and "eval/classes/shared/ce_spliced" in logged[0][1]
    assert ("train/grad_norm", 1) in scalars and scalars[-1] == "closed"
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ImportError, match="log_to: 'wandb' needs the wandb package"):
        train(A, B, TEXTS, config(tmp_path / "none", steps=1, log_to=("wandb",)))


def test_cuda_autocast_paths_with_recorders(monkeypatch):
    calls = []

    class Scaler:
        def __init__(self, device):
            calls.append(("scaler", device))

        def scale(self, loss):
            calls.append("scale")
            return loss * 1.0

        def unscale_(self, optimizer):
            calls.append("unscale")

        def step(self, optimizer):
            calls.append("step")

        def update(self):
            calls.append("update")

    monkeypatch.setattr(precision_mod.torch.amp, "GradScaler", Scaler)
    monkeypatch.setattr(
        precision_mod.torch,
        "autocast",
        lambda device_type, dtype: calls.append((device_type, dtype)) or torch.enable_grad(),
    )
    for name, dtype, scaled in (("bf16", torch.bfloat16, False), ("fp16", torch.float16, True)):
        calls.clear()
        p = precision_mod.precision_for(name, torch.device("cuda", 0))
        w = torch.nn.Parameter(torch.ones(2))
        opt = torch.optim.SGD([w], lr=0.1)
        with p.autocast():
            loss = (w * 2).sum()
        p.backward(loss)
        p.unscale(opt)
        p.step(opt)
        expected = [("cuda", dtype)]
        if scaled:
            expected = [("scaler", "cuda"), *expected, "scale", "unscale", "step", "update"]
        assert calls == expected
        assert torch.equal(w.grad, torch.full((2,), 2.0))  # adapter weights and their gradients stay fp32
    with pytest.raises(ValueError, match="autocast: 'bf16' needs a CUDA device"):
        precision_mod.precision_for("bf16", torch.device("cpu"))


def test_each_evaluation_writes_greedy_samples_under_that_steps_adapter(models, tmp_path):
    A, B = models
    held_out = ["The <b>cat</b> & the dog sat by the warm fire all day long.", *TEXTS[:3]]
    run = config(tmp_path / "s", steps=4, eval_every=2, samples=2, sample_tokens=4, checkpoint_every=2, keep_checkpoints=3)
    result = train(A, B, TEXTS, run, eval_texts=held_out)
    samples = [r for r in result.history if r["split"] == "samples"]
    assert [r["step"] for r in samples] == [0, 2, 4]
    # the prompts: the first two held-out texts cut to their openings (half of each, at a space), by hand
    prompts = [s["prompt"] for s in samples[0]["samples"]]
    assert prompts == ["The <b>cat</b> & the dog sat", held_out[1][: held_out[1][: len(held_out[1]) // 2].rfind(" ")]]
    # each evaluation's samples are greedy decoding under the adapter of that step (its checkpoint)
    for record in samples[1:]:
        adapter = stitch.adapters.load_adapter(tmp_path / "s" / "checkpoints" / f"step-{record['step']:08d}")
        want = stitch.Splice(A, B, 1, adapter=adapter).generate(prompts, max_new_tokens=4, do_sample=False)
        assert [s["continuation"] for s in record["samples"]] == want
    on_disk = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in on_disk if r["split"] == "samples"] == samples
    html = write_run_report(tmp_path / "s").read_text()
    assert "generation samples" in html and "The &lt;b&gt;cat&lt;/b&gt; &amp; the dog sat" in html
    assert "<b>cat" not in html
    quiet = train(A, B, TEXTS, config(tmp_path / "q", steps=2, eval_every=2), eval_texts=held_out)
    assert not [r for r in quiet.history if r["split"] == "samples"]  # samples=0: none


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(samples=-1), r"samples: expected an integer >= 0, got -1"),
        (dict(samples=2, sample_tokens=0), r"sample_tokens: expected an integer >= 1, got 0"),
        (dict(samples=2, alignment="source"), r"samples: 2 needs alignment='target'"),
        (dict(stride=2), r"stride: 2 needs max_length"),
        (dict(max_length=8, stride=4), r"stride: expected an integer in \[0, 4\)"),
    ],
)
def test_sample_and_chunk_options_are_checked_when_the_config_is_built(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **overrides)
