"""Checkpoint directories: found without `latest.json`, never mixing runs, falling back past a damaged newest
one, pruned by write order, and every file — trainer_state.json included — verified against a manifest."""

import hashlib
import json
import os
import warnings

import pytest
import torch

import stitch.training.checkpoint as ckpt
from stitch.adapters import build_adapter

MANIFEST_NAME = "manifest.json"


def make(seed: int = 0):
    torch.manual_seed(seed)
    adapter = build_adapter("affine", d_source=8, d_target=8)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=0.1)
    adapter(torch.randn(5, 8)).square().sum().backward()
    optimizer.step()
    return adapter, optimizer


def save(directory, step, run="run-a", keep=None, seed=None):
    adapter, optimizer = make(step if seed is None else seed)
    return ckpt.save_checkpoint(directory, step, adapter, optimizer, run=run, keep=keep, state={"at": step})


def listing(directory):
    return sorted(os.listdir(directory))


def rewrite_json(file, change):
    record = json.loads(file.read_text())
    change(record)
    file.write_text(json.dumps(record, indent=1) + "\n")


def test_without_latest_json_the_newest_checkpoint_is_found_and_a_run_resumes_from_it(tmp_path):
    for step in (2, 4, 6):
        save(tmp_path, step, keep=2)
    (tmp_path / "latest.json").unlink()  # what the old error message advised
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step-00000006"
    adapter, optimizer = make(99)
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), adapter, optimizer)["state"] == {"at": 6}
    save(tmp_path, 8, keep=2)  # the next save continues the same directory
    assert listing(tmp_path) == ["latest.json", "step-00000006", "step-00000008"]


def test_checkpoints_of_different_runs_are_never_mixed(tmp_path):
    save(tmp_path, 5, run="run-a")
    with pytest.raises(
        ValueError, match=r"checkpoints of different runs \(run 'run-a' \(step-00000005\), run 'run-b'"
    ):
        save(tmp_path, 1, run="run-b", keep=1)
    assert listing(tmp_path) == ["latest.json", "step-00000005"]  # nothing written, nothing pruned
    other = tmp_path.parent / "other"
    save(other, 3, run="run-b")
    os.replace(other / "step-00000003", tmp_path / "step-00000003")  # mixed by hand
    with pytest.raises(ValueError, match="checkpoints of different runs .* would be mixed"):
        ckpt.latest_checkpoint(tmp_path)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    save(tmp_path, 1, keep=2)
    save(tmp_path, 2, keep=2)
    weights = tmp_path / "step-00000002" / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:-3])
    with pytest.warns(
        UserWarning, match=r"step-00000002/adapter.safetensors: truncated.*resuming from step-00000001"
    ):
        assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step-00000001"
    # the next save prunes the damaged one instead of the last good one
    save(tmp_path, 2, keep=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step-00000002"
    assert listing(tmp_path) == ["latest.json", "step-00000001", "step-00000002"]
    for step in (1, 2):  # every file damaged: an error, never a silent fresh start
        (tmp_path / f"step-0000000{step}" / "optimizer.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="no checkpoint passes verification .*step-00000002.*step-00000001"):
        ckpt.latest_checkpoint(tmp_path)


def test_a_pointer_without_checkpoints_is_an_error_and_an_empty_directory_is_none(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path / "none") is None
    assert ckpt.latest_checkpoint(tmp_path) is None
    save(tmp_path, 3)
    os.replace(tmp_path / "step-00000003", tmp_path.parent / "moved")
    with pytest.raises(ValueError, match="latest.json names a checkpoint, but no step-.* directory exists"):
        ckpt.latest_checkpoint(tmp_path)


def test_pruning_keeps_the_most_recently_written_never_the_highest_named(tmp_path):
    save(tmp_path, 90, keep=1)
    written = save(tmp_path, 10, keep=1)  # e.g. a run restarted from scratch with resume
    assert listing(tmp_path) == ["latest.json", "step-00000010"]
    assert ckpt.latest_checkpoint(tmp_path) == written
    save(tmp_path, 20, keep=2)
    save(tmp_path, 5, keep=2)
    assert listing(tmp_path) == ["latest.json", "step-00000005", "step-00000020"]
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step-00000005"  # written last, though lowest


def test_an_edited_trainer_state_is_refused(tmp_path):
    path = save(tmp_path, 300)
    rewrite_json(path / "trainer_state.json", lambda r: r.update(step=30))  # still valid JSON
    with pytest.raises(ValueError, match=r"trainer_state.json: (truncated or )?altered"):
        ckpt.load_checkpoint(path, *make())


def test_an_empty_or_partial_file_list_is_corrupt(tmp_path):
    path = save(tmp_path, 1)
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    rewrite_json(path / "trainer_state.json", lambda r: r.update(files={}, step=7))
    with pytest.raises(ValueError, match="altered"):
        ckpt.load_checkpoint(path, *make())
    for files in ({}, {k: v for k, v in manifest["files"].items() if k != "trainer_state.json"}):
        # a manifest whose own hash agrees with its (empty or partial) list disables nothing
        forged = {**manifest, "files": files}
        forged["sha256"] = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        (path / MANIFEST_NAME).write_text(json.dumps(forged))
        with pytest.raises(ValueError, match=r"manifest.json: corrupt: it lists .*; valid: at least"):
            ckpt.load_checkpoint(path, *make())
    (path / MANIFEST_NAME).write_text(json.dumps({**manifest, "files": {}}))  # list changed, hash not
    with pytest.raises(ValueError, match="does not match its own SHA-256"):
        ckpt.load_checkpoint(path, *make())
    (path / MANIFEST_NAME).unlink()
    with pytest.raises(ValueError, match="written by an older stitch"):
        ckpt.load_checkpoint(path, *make())


def test_non_finite_values_are_never_written(tmp_path):
    good = save(tmp_path, 1, keep=1)
    adapter, optimizer = make()
    with torch.no_grad():
        adapter.weight[0, 0] = float("nan")
    with pytest.raises(
        ValueError, match=r"step 2: the adapter or optimizer holds non-finite values \(adapter.weight"
    ):
        ckpt.save_checkpoint(tmp_path, 2, adapter, optimizer, run="run-a", keep=1)
    adapter, optimizer = make()
    with pytest.raises(ValueError, match="state: holds NaN or infinity"):
        ckpt.save_checkpoint(tmp_path, 2, adapter, optimizer, run="run-a", keep=1, state={"x": float("inf")})
    assert listing(tmp_path) == ["latest.json", "step-00000001"]
    assert ckpt.latest_checkpoint(tmp_path) == good
    ckpt.read_record(good)  # untouched and still verified
