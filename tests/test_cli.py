"""The `stitch` command line: every subcommand run in-process on tiny saved models, artifacts checked against
the library calls they wrap; YAML configs, flag precedence, and clear errors."""

import json
import re
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml

import stitch
from analyses.alignment import alignment_summary
from analyses.layer_similarity import layer_similarity
from analyses.sweep import layer_sweep
from stitch.adapters.fit import fit_adapter
from stitch.adapters.io import read_adapter_record
from stitch.cli import COMMANDS, main, read_yaml
from stitch.cli.texts import read_texts
from stitch.testing import CORPUS, byte_bpe_tokenizer, tiny_model

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "cli.md"

TEXTS = [t for t in dict.fromkeys(CORPUS) if "\n" not in t]  # one text per line in the file


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two saved llama models with different tokenizers and widths (32 → 48), and their loaded twins."""
    root = tmp_path_factory.mktemp("cli")
    toks = (byte_bpe_tokenizer(), byte_bpe_tokenizer(vocab_size=280, bos=False))
    models = []
    for name, tok, layers, width, seed in (("a", toks[0], 2, 32, 0), ("b", toks[1], 3, 48, 1)):
        hf = tiny_model("llama", len(tok), layers, width, seed=seed)
        hf.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        models.append(stitch.load_model(hf, tokenizer=tok))
    (root / "texts.txt").write_text("\n".join(TEXTS) + "\n\n")
    return root, *models


def flags(root, **extra):
    base = {"source-model": root / "a", "target-model": root / "b"}
    return [str(x) for k, v in {**base, **extra}.items() for x in (f"--{k}", v)]


def read_json(path):
    return json.loads(path.read_text())


def read_config(path):
    """A saved run config without its `stitch_run` record (versions, working directory)."""
    data = yaml.safe_load(path.read_text())
    assert set(data.pop("stitch_run")) == {"versions", "cwd"}
    return data


def test_align_summary_equals_the_library(pair, capsys):
    root, A, B = pair
    out = root / "align"
    argv = ["align", "--source-tokenizer", str(root / "a"), "--target-tokenizer", str(root / "b")]
    assert main([*argv, "--texts", str(root / "texts.txt"), "--out", str(out)]) == 0
    assert read_json(out / "summary.json") == alignment_summary(TEXTS, A.tokenizer, B.tokenizer).to_dict()
    report = (out / "report.html").read_text()
    assert "Token alignment of the first text" in report and report.count('class="plotly-graph-div"') == 2
    assert read_config(out / "config.yaml")["texts"] == str(root / "texts.txt")

    # a bad option is refused (status 2) before any work: the missing tokenizer directory is never reached
    missing = ["--source-tokenizer", str(root / "nowhere"), "--target-tokenizer", str(root / "nowhere")]
    with pytest.raises(SystemExit) as exit_info:
        main(["align", *missing, "--texts", str(root / "texts.txt"), "--out", str(out), "--map-chars", "0"])
    assert exit_info.value.code == 2
    assert "--map-chars: expected an integer >= 1, got 0" in capsys.readouterr().err


def test_cka_matrix_equals_the_library(pair):
    root, A, B = pair
    out = root / "cka"
    assert main(["cka", *flags(root, texts=root / "texts.txt", pairing="shared", out=out)]) == 0
    expected = layer_similarity(A, B, TEXTS, pairing="shared")
    saved = safetensors.torch.load_file(out / "similarity.safetensors")
    torch.testing.assert_close(saved["matrix"], expected.matrix, rtol=1e-6, atol=1e-7)
    meta = read_json(out / "similarity.json")
    assert meta["pairing"] == "shared" and meta["shape"] == [3, 4] and meta["n"] == expected.n
    assert (out / "report.html").read_text().count('class="plotly-graph-div"') == 2
    # the saved config reproduces the run
    assert main(["cka", "--config", str(out / "config.yaml"), "--out", str(root / "cka2")]) == 0
    again = safetensors.torch.load_file(root / "cka2" / "similarity.safetensors")["matrix"]
    assert torch.equal(again, saved["matrix"])


def test_cka_with_a_random_init_control(pair):
    root, A, B = pair
    out = root / "cka-control"
    argv = flags(root, texts=root / "texts.txt", out=out, control="random-init", seed=2)
    assert main(["cka", *argv]) == 0
    expected = layer_similarity(A, B, TEXTS, control="random-init", seed=2)
    saved = safetensors.torch.load_file(out / "similarity.safetensors")
    torch.testing.assert_close(saved["control"], expected.control, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(saved["excess"], expected.excess(), rtol=1e-6, atol=1e-7)
    meta = read_json(out / "similarity.json")
    assert (meta["control_kind"], meta["control_seed"]) == ("random-init", 2) and "control" not in meta
    report = (out / "report.html").read_text()
    assert report.count('class="plotly-graph-div"') == 3 and "Excess over the random-init control" in report


def test_fit_adapter_equals_the_library_and_yaml_equals_flags(pair):
    root, A, B = pair
    texts = root / "texts.txt"
    argv = flags(
        root, **{"source-layer": 1, "target-layer": 2, "kind": "affine", "ridge": 0.01, "train-texts": texts}
    )
    assert main(["fit", *argv, "--out", str(root / "l1.safetensors"), "--no-progress"]) == 0
    saved = stitch.load_adapter(root / "l1.safetensors")
    expected = fit_adapter(A, B, TEXTS, 1, 2, kind="affine", ridge=0.01, progress=False)
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(saved.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)
    meta = read_adapter_record(root / "l1.safetensors")["metadata"]
    assert (meta["source_layer"], meta["target_layer"], meta["kind"]) == (1, 2, "affine")
    assert meta["source_model"] == str(root / "a") and meta["target_model"] == str(root / "b")
    flag_config = read_config(root / "l1.config.yaml")
    assert (flag_config["dtype"], flag_config["device"]) == ("float32", "cpu")  # what ran, not "auto"
    # the same options from YAML (dashed and underscored keys, `1e-2` that YAML reads as a string)
    yaml_text = yaml.safe_dump(
        {**flag_config, "source-model": flag_config.pop("source_model"), "kind": "linear"}
    )
    assert "ridge: 0.01" in yaml_text
    (root / "fit.yaml").write_text(yaml_text.replace("ridge: 0.01", "ridge: 1e-2"))
    assert (
        main(["fit", "--config", str(root / "fit.yaml"), "--kind", "affine", "--out", str(root / "y")]) == 0
    )
    assert read_config(root / "y" / "config.yaml") == {
        **flag_config,
        "source_model": str(root / "a"),
        "out": str(root / "y"),
    }
    assert torch.equal(stitch.load_adapter(root / "y").weight, saved.weight)  # the flag beat YAML's kind


def test_sweep_records_equal_the_library(pair):
    root, A, B = pair
    texts = str(root / "texts.txt")
    argv = flags(root, **{"train-texts": texts, "eval-texts": texts, "out": root / "sweep"})
    assert main(["sweep", *argv, "--source-layers", "0", "2", "--no-baseline", "--no-progress"]) == 0
    records = read_json(root / "sweep" / "records.json")
    expected = layer_sweep(A, B, TEXTS, TEXTS, [0, 2], baseline=False, progress=False)
    assert [r["target_layer"] for r in records] == [0, 3]  # relative depth: depths differ
    for got, want in zip(records, expected, strict=True):
        want = want.to_dict()
        assert Path(got.pop("adapter_path")).is_file() and want.pop("adapter_path") is None
        got_classes, want_classes = got.pop("classes"), want.pop("classes")
        assert got == want
        for name, scores in want_classes.items():
            numbers = {k: v for k, v in scores.items() if isinstance(v, float)}
            assert {k: got_classes[name][k] for k in numbers} == pytest.approx(numbers, rel=1e-5)
    assert "Loss recovered by layer" in (root / "sweep" / "report.html").read_text()


def test_hybrid_and_token_conditioned_sweeps_and_fits_equal_the_library(pair, capsys):
    root, A, B = pair
    texts = str(root / "texts.txt")
    argv = flags(root, **{"train-texts": texts, "eval-texts": texts, "out": root / "hybrid", "pairs": "1:2"})
    options = ["--injection", "hybrid", "--kind", "token_conditioned", "--window", "1", "--ridge", "0.1"]
    assert main(["sweep", *argv, *options, "--no-baseline", "--no-progress"]) == 0
    [record] = read_json(root / "hybrid" / "records.json")
    [want] = layer_sweep(A, B, TEXTS, TEXTS, pairs=[(1, 2)], injection="hybrid", kind="token_conditioned",
                         window=1, ridge=0.1, baseline=False, progress=False)
    assert record["positions"] == want.positions == "shared" and record["blocks_run"] == {"A": [0, 1], "B": [0, 3]}
    assert "different question" in record["answers"]
    assert record["classes"]["shared"]["ce_spliced"] == pytest.approx(want.classes["shared"].ce_spliced, rel=1e-5)
    assert "different question" in (root / "hybrid" / "report.html").read_text()

    argv = flags(root, **{"source-layer": 1, "kind": "token_conditioned", "window": 2, "ridge": 0.1, "train-texts": texts})
    assert main(["fit", *argv, "--out", str(root / "tc.safetensors"), "--no-progress"]) == 0
    saved = stitch.load_adapter(root / "tc.safetensors")
    expected = fit_adapter(A, B, TEXTS, 1, kind="token_conditioned", window=2, ridge=0.1, progress=False)
    assert saved.kind == "token_conditioned" and saved.window == 2
    torch.testing.assert_close(saved.condition_weight, expected.condition_weight, rtol=1e-5, atol=1e-6)

    bad = flags(root, **{"train-texts": texts, "eval-texts": texts, "out": root / "bad", "positions": "middle"})
    with pytest.raises(SystemExit):
        main(["sweep", *bad])
    assert "positions: got 'middle'" in capsys.readouterr().err


def test_generate_equals_the_splice(pair, capsys):
    root, A, B = pair
    adapter_path = root / "gen_adapter.safetensors"
    assert (
        main(["fit", *flags(root, **{"source-layer": 1, "train-texts": root / "texts.txt", "out": adapter_path})])
        == 0
    )
    (root / "prompts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:3]))
    argv = flags(root, **{"source-layer": 1, "adapter": adapter_path, "prompts": root / "prompts.jsonl"})
    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                *argv,
                "--max-new-tokens",
                "3",
                "--policy",
                "all",
                "--batch-size",
                "2",
                "--out",
                str(root / "gen.jsonl"),
            ]
        )
        == 0
    )
    splice = stitch.Splice(A, B, 1, adapter=stitch.load_adapter(adapter_path))
    expected = [
        {"prompt": p, "continuation": c}
        for p, c in zip(TEXTS[:3], splice.generate(TEXTS[:3], max_new_tokens=3, policy="all"), strict=True)
    ]
    written = [json.loads(line) for line in (root / "gen.jsonl").read_text().splitlines()]
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert written == printed == expected
    assert read_config(root / "gen.config.yaml")["policy"] == "all"


def test_generate_sampling_flags_reach_the_splice(pair, capsys):
    root, A, B = pair
    adapter_path = root / "sampling_adapter.safetensors"
    assert main(["fit", *flags(root, **{"source-layer": 1, "train-texts": root / "texts.txt", "out": adapter_path})]) == 0
    (root / "prompts.txt").write_text("\n".join(TEXTS[:2]) + "\n")
    argv = flags(root, **{"source-layer": 1, "adapter": adapter_path, "prompts": root / "prompts.txt"})
    sampling = ["--do-sample", "--top-p", "0.9", "--temperature", "0.7", "--seed", "3", "--policy", "restitch"]
    capsys.readouterr()
    assert main(["generate", *argv, "--max-new-tokens", "4", *sampling]) == 0
    printed = [json.loads(line)["continuation"] for line in capsys.readouterr().out.splitlines()]
    splice = stitch.Splice(A, B, 1, adapter=stitch.load_adapter(adapter_path))
    assert printed == splice.generate(TEXTS[:2], 4, "restitch", do_sample=True, top_p=0.9, temperature=0.7, seed=3)
    with pytest.raises(SystemExit) as exit_info:  # refused before the models load
        main(["generate", *argv, "--top-p", "1.5"])
    assert exit_info.value.code == 2
    assert "--top-p: expected a number in (0, 1], got 1.5" in capsys.readouterr().err


def test_option_errors_name_the_option(pair, capsys):
    root, _, _ = pair
    (root / "bad.yaml").write_text("pairing: mean\nlayers: 3\n")
    cases = [
        (["cka", "--config", str(root / "bad.yaml")], ["unknown key 'layers'", "valid keys:", "'pairing'"]),
        (["cka", "--config", str(root / "nope.yaml")], ["--config: no file at", "nope.yaml"]),
        (["cka", *flags(root, texts="t.txt")], ["missing required option(s) --out"]),
        (["fit", "--source-layer", "x"], ["--source-layer", "invalid int value"]),
        (["cka", "--pairing", "tokens"], ["--pairing", "invalid choice"]),
        (["cka", "--control", "shuffle"], ["--control", "invalid choice", "'random-init'"]),
    ]
    (root / "typed.yaml").write_text("source_layer: one\n")
    cases.append(
        (["fit", "--config", str(root / "typed.yaml")], ["key 'source_layer': expected int, got 'one'"])
    )
    for argv, phrases in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert all(p in err for p in phrases), (argv, err)


def test_run_errors_are_one_clear_line(pair, capsys):
    """Options that pass every check but fail while running: one line, status 1; --debug: the traceback."""
    root, _, _ = pair
    broken = root / "broken"  # a directory whose config.json names no model type: loading fails
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text("{}")
    argv = ["cka", "--source-model", str(broken), "--target-model", str(root / "b")]
    argv += ["--texts", str(root / "texts.txt"), "--out", str(root / "o")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("stitch cka: error: --source-model: could not load") and err.count("\n") == 1, err
    with pytest.raises(ValueError, match="could not load"):
        main([*argv, "--debug"])


def test_demo_console_script(demo_run):
    # the session's one `stitch demo --quick` run (tests/conftest.py), outside the repository, shared with
    # tests/test_readme.py, which runs the same command
    if not demo_run.console_script:
        pytest.skip("the `stitch` console script is not installed (pip install -e .)")
    assert demo_run.args[0] == "demo" and "--quick" in demo_run.args
    done = demo_run.done
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if "self-stitch identity" in x)
    assert float(line.split(":")[1].split("—")[0]) <= 1e-5
    assert (demo_run.out / "report.html").is_file()


def test_docs_yaml_examples_are_valid_configs(tmp_path):
    blocks = re.findall(r"```yaml (\w+)\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert {name for name, _ in blocks} == set(COMMANDS) - {"demo"}
    for name, text in blocks:
        (tmp_path / f"{name}.yaml").write_text(text)
        values = read_yaml(name, str(tmp_path / f"{name}.yaml"))
        assert COMMANDS[name][0].from_dict(values).to_dict().items() >= values.items()


def test_a_saved_config_replays_from_another_directory(pair, monkeypatch, tmp_path):
    """Relative paths at run time become absolute in the saved config; the replay elsewhere gives the same records."""
    root, _, _ = pair
    monkeypatch.chdir(root)
    argv = ["sweep", "--source-model", "a", "--target-model", "b", "--train-texts", "texts.txt"]
    argv += ["--eval-texts", "texts.txt", "--out", "replayed", "--source-layers", "1", "--no-baseline", "--no-progress"]
    assert main(argv) == 0
    saved = read_config(root / "replayed" / "config.yaml")
    assert saved["source_model"] == str(root / "a") and saved["train_texts"] == str(root / "texts.txt")
    assert (saved["dtype"], saved["device"]) == ("float32", "cpu")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = str(root / "replayed" / "config.yaml")
    with pytest.raises(SystemExit):  # the saved --out holds that run: refused, not clobbered
        main(["sweep", "--config", config])
    assert main(["sweep", "--config", config, "--out", "again"]) == 0
    first, again = (read_json(d / "records.json") for d in (root / "replayed", elsewhere / "again"))
    assert [r.pop("adapter_path") for r in again] != [r.pop("adapter_path") for r in first]  # under each --out
    assert again == first


def test_communicate_writes_a_run_directory(pair, tmp_path):
    root, A, _ = pair
    out = tmp_path / "comm"
    config = tmp_path / "comm.yaml"
    config.write_text(f"source_model: {root / 'a'}\ntarget_model: {root / 'a'}\ntasks: math\nks: [1, 2]\njs: [1]\n"
                      f"max_new_tokens: 2\nlimit: 2\nn_boot: 20\nprogress: false\nout: {out}\n")
    assert main(["communicate", "--config", str(config)]) == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 * (4 + 2 * 2)
    summary = read_json(out / "summary.json")
    assert all(r["low"] <= r["mean"] <= r["high"] for r in summary)
    report = (out / "report.html").read_text()
    assert "sample exchanges" in report and "bootstrap intervals" in report
    assert "<dt>a_context</dt>" in report and "loss recovered" not in report  # its own definitions
    assert read_config(out / "config.yaml")["ks"] == [1, 2]
    rebuilt = tmp_path / "rebuilt.html"
    assert main(["report", str(out), "--out", str(rebuilt)]) == 0  # the report is rebuilt from the records
    assert _without_date(rebuilt.read_text()) == _without_date(report)
    with pytest.raises(SystemExit):  # the run's outputs are not clobbered without --overwrite
        main(["communicate", "--config", str(config)])


def _without_date(html):
    return re.sub(r"\d{4}-\d\d-\d\dT[\d:+]+", "DATE", html)


@pytest.mark.parametrize("method", ["closed_form", "trained"])
def test_communicate_learns_one_adapter_per_pair_when_widths_differ(pair, tmp_path, method):
    """32 → 48: --adapter closed_form fits every (k, j) on --fit-texts in one pass, each equal to the single
    pair fit of `stitch.fit_adapter`; trained runs `stitch.train_adapter` per pair and keeps its run."""
    root, A, B = pair
    out = tmp_path / method
    extra = ["--kind", "projection", "--train-steps", "2"] if method == "trained" else ["--ridge", "0.01"]
    argv = ["communicate", *flags(root), "--tasks", "qa", "--ks", "1", "2", "--js", "1", "--limit", "1",
            "--max-new-tokens", "2", "--n-boot", "10", "--no-progress", "--conditions", "activation",
            "--adapter", method, "--fit-texts", str(root / "texts.txt"), "--out", str(out), *extra]
    assert main(argv) == 0
    assert {(r["k"], r["j"]) for r in read_jsonl(out / "records.jsonl")} == {(1, 1), (2, 1)}
    texts = read_texts("texts", str(root / "texts.txt"))
    for k in (1, 2):
        if method == "closed_form":
            saved = stitch.load_adapter(out / "adapters" / f"k{k}_j1.safetensors")
            reference = stitch.fit_adapter(A, B, texts, k, 1, kind="affine", ridge=0.01, progress=False)
            torch.testing.assert_close(saved.weight, reference.weight, rtol=1e-4, atol=1e-5)
        else:
            saved = stitch.load_adapter(out / "adapters" / f"k{k}_j1")
            assert saved.kind == "projection" and saved.weight.shape == (48, 32)
            assert (out / "adapters" / f"k{k}_j1" / "metrics.jsonl").is_file()


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_communicate_validates_before_loading(pair, tmp_path, capsys):
    root, *_ = pair
    base = ["communicate", "--source-model", str(root / "a"), "--target-model", str(root / "missing"),
            "--ks", "1", "--js", "1", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--tasks", "math", "--conditions", "telepathy"])
    assert exit_.value.code == 2 and "--conditions" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "qa"}\n')
    base[base.index(str(root / "missing"))] = str(root / "a")
    assert main([*base, "--tasks", str(bad)]) == 1
    assert "bad.jsonl:1" in capsys.readouterr().err  # the task file fails before the missing model loads


def test_saved_adapter_widths_are_refused_before_the_models_load(pair, tmp_path, capsys):
    """B's directory holds its config.json and tokenizer but no weights: an adapter of the wrong width is
    refused from the header and the config alone (status 2), where loading B would have failed (status 1)."""
    root, *_ = pair
    config_only = tmp_path / "b_config_only"
    shutil.copytree(root / "b", config_only, ignore=shutil.ignore_patterns("*.safetensors"))
    wide = stitch.save_adapter(stitch.adapters.Affine(32, 64), tmp_path / "wide.safetensors")
    models = ["--source-model", str(root / "a"), "--target-model", str(config_only)]
    for argv in (
        ["generate", *models, "--source-layer", "1", "--prompts", str(root / "texts.txt"), "--adapter", str(wide)],
        ["communicate", *models, "--tasks", "qa", "--ks", "1", "--js", "1", "--out", str(tmp_path / "c"),
         "--adapter", str(wide)],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert exit_info.value.code == 2, message
        assert message.endswith(f"--adapter: got {wide} mapping widths 32 → 64; valid: 32 → 48, the d_model of "
                                f"--source-model {root / 'a'} → --target-model {config_only} (their config.json)")
    fitting = stitch.save_adapter(stitch.adapters.Affine(32, 48), tmp_path / "fitting.safetensors")
    assert main(argv[:-1] + [str(fitting)]) == 1  # passes the preflight, then B cannot load: it has no weights
    assert "--target-model: could not load" in capsys.readouterr().err


def test_a_width_the_preflight_cannot_read_is_caught_after_loading(pair, tmp_path, monkeypatch, capsys):
    root, *_ = pair
    monkeypatch.setattr(stitch.cli.preflight, "_read_shape", lambda directory: stitch.cli.preflight.ModelShape())
    wide = stitch.save_adapter(stitch.adapters.Affine(32, 64), tmp_path / "wide.safetensors")
    argv = ["generate", *flags(root), "--source-layer", "1", "--prompts", str(root / "texts.txt"), "--adapter", str(wide)]
    assert main(argv) == 1
    assert "adapter: maps 32 → 64, but the splice needs d_source=32 (A's d_model) → d_target=48" in capsys.readouterr().err


def test_a_resumed_train_run_is_checked_against_its_checkpoint_before_the_models_load(pair, tmp_path, monkeypatch, capsys):
    """Rerunning `stitch train` on an --out holding checkpoints: a model of another width (a config.json with no
    weights, so loading it would fail with status 1), other layers, other models or --no-resume exit 2 from the
    checkpoint's adapter header and trainer state alone, as do fewer --steps than it has taken; the same command,
    given more steps, resumes; a checkpoint that does not verify is left to the resume after loading."""
    from stitch.cli import saved as saved_files
    from stitch.cli.main import Command
    from stitch.training import checkpoint

    root, *_ = pair
    out = tmp_path / "run"
    train = ["train", *flags(root), "--train-texts", str(root / "texts.txt"), "--batch-size", "2",
             "--checkpoint-every", "1", "--no-progress", "--out", str(out)]
    assert main([*train, "--source-layer", "1", "--steps", "1"]) == 0
    assert main([*train, "--source-layer", "1", "--steps", "2"]) == 0  # extended: resumed from step 1
    assert checkpoint.latest_checkpoint(out / "checkpoints").name == "step-00000002"
    narrow = tmp_path / "a_narrow"  # A's config.json at width 16, no weights
    shutil.copytree(root / "a", narrow, ignore=shutil.ignore_patterns("*.safetensors"))
    (narrow / "config.json").write_text(json.dumps({**read_json(narrow / "config.json"), "hidden_size": 16}))
    same_width = tmp_path / "a_copy"
    shutil.copytree(narrow, same_width)
    shutil.copy(root / "a" / "config.json", same_width / "config.json")
    saved = out / "checkpoints" / "step-00000002"
    cases = [
        (["--source-model", str(narrow), "--source-layer", "1"],
         f"--out: got {saved / 'adapter.safetensors'} mapping widths 32 → 48; valid: 16 → 48, the d_model of "
         f"--source-model {narrow} → --target-model {root / 'b'} (their config.json)"),
        (["--layer-pairs", "1:2"], f"--out: the checkpoint {saved} was written with a different config "
         "(layer_pairs: None → ['1:2'], source_layer: 1 → None); use the same options, or a new out directory"),
        (["--source-model", str(same_width), "--source-layer", "1"],
         f"(source_model: '{root / 'a'}' → '{same_width}')"),
        (["--source-layer", "1", "--no-resume"],
         f"--no-resume: --out {out} holds checkpoints of an earlier run (step-00000002); resume it"),
        (["--source-layer", "1", "--steps", "1"], f"--steps: got 1, but the checkpoint {saved} is at step 2; "
         "valid: >= 2 (a run is extended with more steps or epochs, never fewer)"),
    ]
    real_load = Command.load
    monkeypatch.setattr(Command, "load", lambda self: pytest.fail("the subcommand ran"))
    for extra, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            main([*train, "--steps", "3", *extra])  # a later --steps wins
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert exit_info.value.code == 2 and expected in message, message
    monkeypatch.setattr(Command, "load", real_load)
    assert main([*train, "--source-layer", "1", "--steps", "3"]) == 0  # extended again, from step 2
    assert saved_files.read_checkpoint(out / "checkpoints")["path"].name == "step-00000003"
    assert (saved_files.CHECKPOINTS, saved_files.CHECKPOINT_STATE) == ("checkpoints", checkpoint.STATE_NAME)
    assert saved_files.CHECKPOINT_FORMAT == (checkpoint.FORMAT, checkpoint.FORMAT_VERSION)
    (out / "checkpoints" / "step-00000003" / "adapter.safetensors").write_bytes(b"damaged")
    assert saved_files.read_checkpoint(out / "checkpoints")["path"].name == "step-00000002"  # as the resume skips it
    with pytest.warns(UserWarning, match="skipped checkpoints"):
        assert checkpoint.latest_checkpoint(out / "checkpoints").name == "step-00000002"
    (saved / "adapter.safetensors").write_bytes(b"damaged")  # none verifies: the preflight passes, the resume refuses
    assert saved_files.read_checkpoint(out / "checkpoints") is None
    assert main([*train, "--source-model", str(narrow), "--source-layer", "1", "--steps", "3"]) == 1
    assert "--source-model: could not load" in capsys.readouterr().err


def test_communicate_with_a_saved_adapter_equals_the_library(pair, tmp_path):
    from analyses.communication import communication_sweep
    from analyses.evaluation import load_tasks

    root, A, B = pair
    path = stitch.save_adapter(fit_adapter(A, B, TEXTS, 1, 1, kind="affine", progress=False), tmp_path / "ad")
    out = tmp_path / "comm"
    argv = ["communicate", *flags(root), "--tasks", "qa", "--ks", "1", "--js", "1", "--limit", "1",
            "--max-new-tokens", "2", "--n-boot", "10", "--no-progress", "--conditions", "activation",
            "--adapter", str(path.parent), "--out", str(out)]
    assert main(argv) == 0
    expected = communication_sweep(A, B, load_tasks("qa")[:1], [1], [1], adapter=stitch.load_adapter(path),
                                   positions=[-1], source_positions=[-1], conditions=["activation"],
                                   max_new_tokens=2, progress=False)
    assert read_jsonl(out / "records.jsonl") == json.loads(json.dumps(expected))


def test_generate_puts_a_saved_adapter_straight_on_b_side(pair, tmp_path, monkeypatch):
    """A elsewhere (here 'meta', standing in for another GPU): the adapter goes from the file to B's side
    through the Splice's one placement, never to A's device (the old `.to(A.device)` left it on 'meta')."""
    from stitch.cli import generate
    from stitch.cli.generate_config import GenerateConfig
    from stitch.models.placement import record_moves

    root, A, B = pair
    saved = stitch.adapters.Affine(32, 48)
    torch.nn.init.normal_(saved.weight)
    path = stitch.save_adapter(saved, tmp_path / "ad.safetensors")
    far = stitch.HookedLM(tiny_model("llama", len(A.tokenizer), 2, 32).to("meta"), A.tokenizer)
    monkeypatch.setattr(generate, "load_models", lambda config: (far, B))
    config = GenerateConfig(source_model=str(root / "a"), target_model=str(root / "b"), source_layer=1,
                            prompts=str(root / "texts.txt"), adapter=str(path))
    with record_moves() as moves:
        splice = generate.build_splice(config)
    assert far.device == torch.device("meta") and splice.write_device == B.device_of(1) == torch.device("cpu")
    assert {p.device for p in splice.adapter.parameters()} == {splice.write_device}
    assert moves == []  # read onto the CPU, where B's layer 1 is: nothing moved
    assert torch.equal(splice.adapter.weight, saved.weight) and torch.equal(splice.adapter.bias, saved.bias)
