"""Gradient-based adapter training (one process): it learns a planted rotation, its numbers match independent
computations, a resumed run equals an uninterrupted one bit for bit, checkpoints are never lost or trusted
when damaged, and bad options name the field and its valid range."""

import json
import math
import os

import pytest
import torch
import yaml

import stitch
import stitch.training.checkpoint as ckpt
import stitch.training.loop as train_mod
from stitch.adapters import build_adapter
from stitch.adapters.fit import fit_adapter
from stitch.cli import main
from stitch.losses import mean_cross_entropy, next_token_labels
from stitch.testing import CORPUS, byte_bpe_tokenizer, rotated_copy, tiny_model, train_briefly
from stitch.training.loop import TrainConfig, learning_rate, train

TEXTS = list(dict.fromkeys(CORPUS))  # 6 distinct texts


@pytest.fixture(scope="module")
def rotated():
    """A briefly trained tiny Llama and its rotated copy (the same function in the basis x @ Q)."""
    tok = byte_bpe_tokenizer()
    hf = train_briefly(tiny_model("llama", vocab_size=len(tok), seed=1), tok, TEXTS)
    copy, Q = rotated_copy(hf, seed=2)
    return stitch.load_model(hf, tokenizer=tok), stitch.load_model(copy, tokenizer=tok), Q


def untimed(history):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in history]


def config(tmp_path, **overrides):
    base = dict(out=str(tmp_path / "run"), source_layer=1, kind="linear", lr=3e-2, steps=30, batch_size=3)
    return TrainConfig(**{**base, "progress": False, **overrides})


@pytest.mark.parametrize("kind", ["linear", "affine"])
def test_training_from_a_rotated_copy_closes_most_of_the_gap_to_native(rotated, tmp_path, kind):
    A, B, _ = rotated
    result = train(A, B, TEXTS, config(tmp_path, kind=kind, eval_every=15), eval_texts=TEXTS)
    evals = [r for r in result.history if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [0, 15, 30]
    first, last = evals[0], evals[-1]
    gap = first["ce_spliced"] - last["ce_native"]
    assert gap > 1.0  # identity init in the wrong basis: far from B's own loss
    assert first["ce_spliced"] - last["ce_spliced"] > 0.8 * gap
    assert last["loss_recovered"] > 0.6 > first["loss_recovered"]
    # the final record against an independent computation: one batch, the saved adapter, stitch.losses
    batch = B.encode(TEXTS)
    labels = next_token_labels(batch)
    assert last["ce_native"] == pytest.approx(mean_cross_entropy(B.logits(batch), labels).item(), abs=1e-5)
    assert last["classes"]["shared"]["n_tokens"] == last["tokens"]  # one tokenizer: every position is shared
    saved = stitch.load_adapter(tmp_path / "run")
    assert all(torch.equal(saved.state_dict()[k], v) for k, v in result.adapter.state_dict().items())
    spliced = stitch.Splice(A, B, 1, adapter=saved)(TEXTS).loss.item()
    assert last["ce_spliced"] == pytest.approx(spliced, abs=1e-5)
    assert last["tokens"] == int((labels != -100).sum())
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == result.history


def test_procrustes_stays_orthogonal_and_a_fitted_init_starts_at_native(rotated, tmp_path):
    A, B, _ = rotated
    result = train(A, B, TEXTS, config(tmp_path, kind="procrustes", steps=5), eval_texts=TEXTS)
    W = result.adapter.weight.detach().double()
    torch.testing.assert_close(W @ W.T, torch.eye(32, dtype=torch.float64), atol=1e-5, rtol=0)
    assert result.history[-1]["ce_spliced"] < result.history[0]["ce_spliced"]
    fitted = train(
        A, B, TEXTS, config(tmp_path / "fit", kind="procrustes", init="fit", steps=1), eval_texts=TEXTS
    )
    start = fitted.history[0]
    assert start["step"] == 0 and start["ce_spliced"] == pytest.approx(start["ce_native"], abs=1e-3)


def test_learning_rate_schedules():
    c = TrainConfig(out="x", source_layer=0, lr=1.0, warmup=4, schedule="cosine")
    assert [learning_rate(s, 14, c) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert learning_rate(9, 14, c) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    linear = TrainConfig(out="x", source_layer=0, lr=2.0, schedule="linear")
    assert learning_rate(5, 10, linear) == pytest.approx(1.0)
    assert learning_rate(7, 10, TrainConfig(out="x", source_layer=0, lr=2.0)) == 2.0


class Crash(Exception):
    pass


def test_resume_continues_bit_exactly(rotated, tmp_path, monkeypatch):
    A, B, _ = rotated
    options = dict(kind="lowrank", adapter_options=("rank=4",), steps=8, batch_size=2, warmup=2,
                   schedule="cosine", weight_decay=0.1, grad_clip=0.5, log_every=1, eval_every=4,
                   checkpoint_every=3, keep_checkpoints=1, lr=1e-2)  # fmt: skip
    straight = train(A, B, TEXTS, config(tmp_path / "a", **options), eval_texts=TEXTS[:3])

    calls, real = [], train_mod.step_backward

    def crash_at_seventh_step(*args):
        calls.append(1)
        if len(calls) == 7:
            raise Crash
        return real(*args)

    monkeypatch.setattr(train_mod, "step_backward", crash_at_seventh_step)
    with pytest.raises(Crash):
        train(A, B, TEXTS, config(tmp_path / "b", **options), eval_texts=TEXTS[:3])
    assert ckpt.latest_checkpoint(tmp_path / "b" / "run" / "checkpoints").name == "step-00000006"
    calls.clear()
    resumed = train(A, B, TEXTS, config(tmp_path / "b", **options), eval_texts=TEXTS[:3])
    assert len(calls) == 2  # steps 7 and 8 only
    for key, value in straight.adapter.state_dict().items():
        assert torch.equal(resumed.adapter.state_dict()[key], value), key
    assert untimed(resumed.history) == untimed(straight.history)  # wall-clock speed is no part of the state
    metrics = [(p / "run" / "metrics.jsonl").read_text().splitlines() for p in (tmp_path / "a", tmp_path / "b")]
    assert untimed(map(json.loads, metrics[0])) == untimed(map(json.loads, metrics[1]))
    assert sorted(os.listdir(tmp_path / "b" / "run" / "checkpoints")) == ["latest.json", "step-00000008"]


def test_a_resumed_run_must_match_the_checkpoint(rotated, tmp_path):
    A, B, _ = rotated
    train(A, B, TEXTS, config(tmp_path, steps=2, checkpoint_every=1))
    with pytest.raises(ValueError, match=r"resume: .*different config \(lr: 0.03 → 0.01"):
        train(A, B, TEXTS, config(tmp_path, steps=2, checkpoint_every=1, lr=1e-2))
    with pytest.raises(ValueError, match=r"resume: .*different config \(kind: 'linear' → 'lowrank'"):
        train(A, B, TEXTS, config(tmp_path, steps=2, checkpoint_every=1, kind="lowrank"))
    with pytest.raises(ValueError, match="resume: .*different texts"):
        train(A, B, TEXTS[::-1], config(tmp_path, steps=2, checkpoint_every=1))
    with pytest.raises(ValueError, match="resume: False, but .* holds checkpoints"):
        train(A, B, TEXTS, config(tmp_path, steps=2, checkpoint_every=1, resume=False))


def strict_json(line: str):
    """JSON as every parser reads it: Python's json accepts bare NaN / Infinity, which is not JSON."""
    return json.loads(line, parse_constant=lambda token: pytest.fail(f"non-JSON constant {token}"))


@pytest.mark.parametrize("poison", ["loss", "gradient"])
def test_a_non_finite_step_stops_the_run_and_keeps_the_last_good_checkpoint(
    rotated, tmp_path, monkeypatch, poison
):
    A, B, _ = rotated
    calls, real = [], train_mod.step_backward

    def nan_at_fourth_step(terms, views, dist, precision=None):
        calls.append(1)
        record = real(terms, views, dist, precision)
        if len(calls) < 4:
            return record
        if poison == "gradient":  # a finite loss whose backward overflowed
            next(views[0][0].splice.adapter.parameters()).grad.view(-1)[0] = float("inf")
            return record
        return {**record, "loss": float("nan")}

    monkeypatch.setattr(train_mod, "step_backward", nan_at_fourth_step)
    options = dict(steps=8, checkpoint_every=1, keep_checkpoints=2, log_every=1)
    with pytest.raises(
        train_mod.NonFiniteError,
        match=r"training step 4 \(source layer 1 → target layer 1\): .*"
        r"(loss is nan|gradient of weight).* last good checkpoint, step-00000003, is kept",
    ):
        train(A, B, TEXTS, config(tmp_path, **options))
    directory = tmp_path / "run" / "checkpoints"
    assert sorted(os.listdir(directory)) == ["latest.json", "step-00000002", "step-00000003"]
    assert ckpt.latest_checkpoint(directory).name == "step-00000003"
    adapter = build_adapter("linear", d_source=32, d_target=32)
    assert ckpt.load_checkpoint(directory / "step-00000003", adapter)["step"] == 3
    assert all(torch.isfinite(v).all() for v in adapter.state_dict().values())
    assert not (tmp_path / "run" / "adapter.safetensors").exists()  # no final adapter from a poisoned run
    records = [strict_json(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[-1].get("nonfinite", []) == (["loss"] if poison == "loss" else [])
    assert (records[-1]["loss"] is None) == (poison == "loss")
    assert "training step 4" in records[-1]["error"]
    # the run can be rerun: it resumes from step 3 and fails at the same step again, losing nothing
    calls.clear()
    calls.extend([1, 1, 1])  # step 4 is the resumed run's first call
    with pytest.raises(train_mod.NonFiniteError, match="training step 4"):
        train(A, B, TEXTS, config(tmp_path, **options))
    assert sorted(os.listdir(directory)) == ["latest.json", "step-00000002", "step-00000003"]


def test_metrics_are_strict_json_with_non_finite_values_as_null_and_flagged(rotated, tmp_path, monkeypatch):
    A, B, _ = rotated
    real = train_mod.evaluate_splices

    def undefined_loss_recovered(*args):  # as when B's native loss equals the reference loss
        return [{**r, "loss_recovered": float("nan"), "by_class": {"shared": float("-inf")}} for r in real(*args)]

    monkeypatch.setattr(train_mod, "evaluate_splices", undefined_loss_recovered)
    result = train(A, B, TEXTS, config(tmp_path, steps=2, checkpoint_every=1), eval_texts=TEXTS[:2])
    records = [strict_json(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records == result.history
    evals = [r for r in records if r["split"] == "eval"]
    assert len(evals) == 2 and all(r["loss_recovered"] is None for r in evals)
    assert all(r["nonfinite"] == ["loss_recovered", "by_class.shared"] for r in evals)
    assert all(math.isfinite(r["ce_spliced"]) for r in evals)
    resumed = train(A, B, TEXTS, config(tmp_path, steps=2, checkpoint_every=1), eval_texts=TEXTS[:2])
    assert resumed.history == result.history  # the checkpoint holds the same strict records


@pytest.fixture
def saved_checkpoint(tmp_path):
    """A checkpoint of an Affine adapter after one AdamW step, and the adapter and optimizer it saved."""
    torch.manual_seed(0)
    adapter = build_adapter("affine", d_source=8, d_target=8)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=0.1)
    adapter(torch.randn(5, 8)).square().sum().backward()
    optimizer.step()
    path = ckpt.save_checkpoint(tmp_path / "ck", 1, adapter, optimizer, state={"note": "first"})
    return path, adapter, optimizer


def fresh():
    adapter = build_adapter("affine", d_source=8, d_target=8)
    return adapter, torch.optim.AdamW(adapter.parameters(), lr=0.5)


def test_checkpoint_round_trip_restores_everything(saved_checkpoint):
    path, adapter, optimizer = saved_checkpoint
    expected_rng = torch.get_rng_state()
    torch.manual_seed(123)
    into, opt = fresh()
    record = ckpt.load_checkpoint(path, into, opt)
    assert record["step"] == 1 and record["state"] == {"note": "first"}
    assert torch.equal(torch.get_rng_state(), expected_rng)
    assert all(torch.equal(into.state_dict()[k], v) for k, v in adapter.state_dict().items())
    saved, loaded = optimizer.state_dict(), opt.state_dict()
    assert loaded["param_groups"] == saved["param_groups"]
    for index, entries in saved["state"].items():
        assert all(torch.equal(loaded["state"][index][k], v) for k, v in entries.items())


@pytest.mark.parametrize(
    "name, damage, message",
    [
        ("optimizer.safetensors", lambda b: b[:-7], "truncated"),
        ("adapter.safetensors", lambda b: b[: len(b) // 2], "truncated"),
        ("adapter.safetensors", lambda b: b[:-1] + bytes([b[-1] ^ 1]), "altered"),
        ("trainer_state.json", lambda b: b[:40], "truncated"),
        ("manifest.json", lambda b: b[:40], "truncated or corrupt"),
    ],
)
def test_a_damaged_checkpoint_is_refused(saved_checkpoint, name, damage, message):
    path = saved_checkpoint[0]
    file = path / name
    file.write_bytes(damage(file.read_bytes()))
    with pytest.raises(ValueError, match=message):
        ckpt.load_checkpoint(path, *fresh())


def test_a_crash_mid_save_leaves_the_previous_checkpoint(saved_checkpoint, monkeypatch):
    path, adapter, optimizer = saved_checkpoint
    directory = path.parent
    (directory / ".tmp-killed").mkdir()  # what a save killed by SIGKILL leaves behind
    monkeypatch.setattr(ckpt, "write_manifest", lambda _: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(directory, 2, adapter, optimizer)
    assert ckpt.latest_checkpoint(directory) == path
    assert sorted(os.listdir(directory)) == [".tmp-killed", "latest.json", "step-00000001"]
    assert ckpt.load_checkpoint(path, *fresh())["step"] == 1
    monkeypatch.undo()
    ckpt.save_checkpoint(directory, 2, adapter, optimizer, keep=1)
    assert sorted(os.listdir(directory)) == ["latest.json", "step-00000002"]
    for keep in (0, -1, 1.5):  # keep=0 used to keep every checkpoint ([:-0] is empty)
        with pytest.raises(ValueError, match=rf"keep: expected an integer >= 1 or None, got {keep}"):
            ckpt.save_checkpoint(directory, 3, adapter, optimizer, keep=keep)
    assert sorted(os.listdir(directory)) == ["latest.json", "step-00000002"]


def test_a_fitted_init_takes_the_fit_options(rotated, tmp_path):
    A, B, _ = rotated
    ridge = 5.0  # relative: 5x A's mean variance per dimension, far from a no-op
    run = config(tmp_path, kind="affine", init="fit", init_texts=6, init_options=("ridge=5",), steps=1)
    assert run.fit_options() == {"ridge": ridge} and run.to_dict()["init_options"] == ("ridge=5",)
    start = train(A, B, TEXTS, run, eval_texts=TEXTS).history[0]
    ridged, plain = (
        fit_adapter(A, B, TEXTS, 1, kind="affine", ridge=r, progress=False) for r in (ridge, 0.0)
    )
    with torch.no_grad():
        expected = stitch.Splice(A, B, 1, adapter=ridged)(TEXTS).loss.item()
        unregularised = stitch.Splice(A, B, 1, adapter=plain)(TEXTS).loss.item()
    assert start["step"] == 0 and start["ce_spliced"] == pytest.approx(expected, abs=1e-5)
    assert abs(expected - unregularised) > 1e-2  # the ridge reached the fit


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"init_options": ("ridge=0.1",)}, r"init_options: .* valid only with init='fit'"),
        ({"init": "fit", "init_options": ("rank=3",)}, r"init_options: 'rank=3' .* valid keys: \['ridge'\]"),
        ({"init": "fit", "init_options": ("ridge=-1",)}, r"init_options: ridge: got -1; valid: a finite"),
        ({"init": "fit", "init_options": "ridge=1"}, r"init_options: expected a list of key=value"),
        (
            {
                "init": "fit",
                "kind": "procrustes",
                "adapter_options": ("scale=true",),
                "init_options": ("scale=0",),
            },
            r"init_options: \['scale'\] are already set by adapter_options",
        ),
    ],
)
def test_bad_init_options_name_the_field(overrides, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TrainConfig(**{"out": "x", "source_layer": 0, "kind": "affine", **overrides})


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("lr", 0.0, "lr: expected a number > 0.0, got 0.0"),
        ("lr", float("nan"), "lr: expected a number > 0.0, got nan"),
        ("lr", "fast", "lr: expected a number > 0.0, got 'fast'"),
        ("batch_size", 0, "batch_size: expected an integer >= 1, got 0"),
        ("steps", 0, "steps: expected an integer >= 1, got 0"),
        ("grad_clip", -1.0, "grad_clip: expected a number >= 0.0, got -1.0"),
        ("warmup", 2.5, r"warmup: expected an integer >= 0, got 2.5 \(float\)"),
        ("seed", -1, "seed: expected an integer >= 0, got -1"),
        ("keep_checkpoints", 0, "keep_checkpoints: expected an integer >= 1, got 0"),
        ("source_layer", True, "source_layer: expected an integer >= 0, got True"),
        ("kind", "identity", "kind: 'identity' is not one of"),
        ("schedule", "step", r"schedule: 'step' is not one of \['constant', 'linear', 'cosine'\]"),
        ("adapter_options", ("rank",), r"adapter_options: 'rank' is not key=value .* valid keys: \[\]"),
        ("epochs", 2, "steps, epochs: give one or the other"),
        ("init", "fit", r"init: 'fit' needs a closed-form kind"),
    ],
)
def test_bad_config_values_name_the_field_and_the_valid_range(field, value, message):
    extra = {"steps": 5} if field == "epochs" else {"kind": "lowrank"} if field == "init" else {}
    with pytest.raises((ValueError, TypeError), match=message):
        TrainConfig(**{"out": "x", "source_layer": 0, **extra, field: value})
    assert TrainConfig(out="x", source_layer=0, kind="mlp", adapter_options=["hidden=8"]).options() == {
        "hidden": 8
    }


def test_run_time_errors_name_the_field(rotated, tmp_path):
    A, B, _ = rotated
    with pytest.raises(ValueError, match=r"source_layer: layer 4 is out of range; valid layers are 0..3"):
        train(A, B, TEXTS, config(tmp_path, source_layer=4))
    with pytest.raises(ValueError, match=r"texts: 6 training texts, fewer than batch_size=7"):
        train(A, B, TEXTS, config(tmp_path, batch_size=7))
    with pytest.raises(TypeError, match="config: expected a stitch.training.loop.TrainConfig"):
        train(A, B, TEXTS, {"lr": 1})
    assert not (tmp_path / "run").exists()  # nothing written before the errors


def test_cli_train_equals_the_library_and_refuses_bad_options(rotated, tmp_path, capsys):
    A, B, _ = rotated
    for name, model in (("a", A), ("b", B)):
        model.model.save_pretrained(tmp_path / name)
        model.tokenizer.save_pretrained(tmp_path / name)
    lines = [t for t in TEXTS if "\n" not in t]  # one text per line in the file
    (tmp_path / "texts.txt").write_text("\n".join(lines) + "\n")
    options = {
        "source_layer": 1,
        "kind": "affine",
        "lr": 0.03,
        "steps": 6,
        "batch_size": 3,
        "progress": False,
    }
    yaml_options = {**options, "source-model": str(tmp_path / "a"), "target-model": str(tmp_path / "b"),
                    "texts": str(tmp_path / "texts.txt"), "out": str(tmp_path / "cli")}  # fmt: skip
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(yaml_options))
    assert (
        main(["train", "--config", str(tmp_path / "train.yaml"), "--eval-texts", str(tmp_path / "texts.txt")])
        == 0
    )
    library = train(A, B, lines, TrainConfig(out=str(tmp_path / "lib"), **options), eval_texts=lines)
    cli = stitch.load_adapter(tmp_path / "cli")
    for key, value in library.adapter.state_dict().items():
        torch.testing.assert_close(cli.state_dict()[key], value, atol=1e-6, rtol=0)
    saved = yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())  # the old `texts` key was read
    assert saved["steps"] == 6 and saved["train_texts"] == saved["eval_texts"] == str(tmp_path / "texts.txt")
    record = stitch.adapters.read_adapter_record(tmp_path / "cli")["metadata"]
    assert record["source_model"] == str(tmp_path / "a") and record["step"] == 6
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(tmp_path / "train.yaml"), "--lr", "-1"])
    assert exit_info.value.code == 2 and "--lr: expected a number > 0.0, got -1.0" in capsys.readouterr().err


@pytest.fixture(scope="module")
def no_bos():
    """Two tiny models on a tokenizer without BOS: a one-token text ("a") has no next-token label."""
    tok = byte_bpe_tokenizer(300, bos=False)
    assert len(tok("a")["input_ids"]) == 1
    make = lambda seed: stitch.load_model(tiny_model("llama", vocab_size=len(tok), seed=seed), tokenizer=tok)  # noqa: E731
    return make(1), make(2)


def test_evaluation_scores_every_label_even_when_a_chunk_has_none(no_bos):
    from stitch.training.distributed import Dist
    from stitch.training.evaluate import eval_references, evaluate

    sp = stitch.Splice(*no_bos, source_layer=1)
    texts = [CORPUS[0], CORPUS[1], "a", "."]  # with batch_size 2 the second chunk has no label
    record = evaluate(sp, texts, Dist(), batch_size=2, references=eval_references(sp, texts, Dist(), 2))
    whole = sp(texts)
    assert record["tokens"] == int((whole.labels != -100).sum())
    assert record["classes"]["all"]["ce_spliced"] == pytest.approx(whole.loss.item(), abs=1e-5)


def test_a_rank_whose_share_has_no_label_still_runs_backward(no_bos, monkeypatch):
    from stitch.training import distributed

    sp = stitch.Splice(*no_bos, source_layer=1, adapter=build_adapter("affine", d_source=32, d_target=32))
    with pytest.raises(ValueError, match="labels: no next-token label on any of the 1 rank"):
        train_mod.backward(sp, ["a", "."], distributed.Dist())
    other_rank = torch.tensor([12.0, 4.0], dtype=torch.float64)  # another rank's loss sum and tokens
    monkeypatch.setattr(
        distributed, "all_reduce_sum", lambda v, d: torch.as_tensor(v, dtype=torch.float64) + other_rank
    )
    mean, count = train_mod.backward(sp, ["a", "."], distributed.Dist(world_size=2))
    assert (mean, count) == (3.0, 4)  # DDP needs this rank's backward: a hang otherwise
    assert all(p.grad is not None and not p.grad.any() for p in sp.adapter.parameters())
