"""Every subcommand refuses bad options with status 2, naming the option as typed, before any model code
runs or any weights are read; `stitch --help` imports neither torch nor transformers."""

import dataclasses
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import transformers

import stitch
from stitch.cli.main import COMMANDS, Command, main
from stitch.testing import byte_bpe_tokenizer, tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Saved models a (2 blocks, width 32) and b (3 blocks, width 48), texts, a pickle, an earlier run."""
    root = tmp_path_factory.mktemp("validation")
    for name, layers, width, bos in (("a", 2, 32, True), ("b", 3, 48, False)):
        tok = byte_bpe_tokenizer(bos=bos)
        tiny_model("llama", len(tok), layers, width).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    (root / "texts.txt").write_text("one text\nanother text\na third text\n")
    (root / "empty.txt").write_text("\n\n")
    (root / "bad.jsonl").write_text('{"text": "fine"}\nnot json\n')
    (root / "a_file").write_text("not a directory")
    with open(root / "adapter.pt", "wb") as f:
        pickle.dump({"weight": [1.0]}, f)
    (root / "pickled.safetensors").write_bytes(pickle.dumps({"weight": [1.0] * 64}, protocol=4))
    (root / "done").mkdir()
    for name in ("report.html", "summary.json", "records.json", "similarity.json"):
        (root / "done" / name).write_text("{}")
    (root / "done.safetensors").write_bytes(b"")
    (root / "splice").mkdir()
    (root / "splice" / "splice.json").write_text('{"format": "stitch-splice", "format_version": 1}')
    # saved adapters of the wrong widths for a (32) → b (48): the preflight reads them from the header
    stitch.save_adapter(stitch.adapters.Affine(32, 64), root / "wide.safetensors")
    stitch.save_adapter(stitch.adapters.Affine(16, 48), root / "narrow")
    shutil.copytree(root / "splice", root / "splice_wide")
    stitch.save_adapter(stitch.adapters.Affine(32, 64), root / "splice_wide")
    return root


@pytest.fixture
def no_loading(monkeypatch):
    """Records every attempt to load weights, a tokenizer or a subcommand's module."""
    calls = []

    def record(what):
        def fn(*args, **kwargs):
            calls.append(what)
            raise AssertionError(f"{what} was called during option checking")

        return fn

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", record(f"{cls.__name__}.from_pretrained"))
    monkeypatch.setattr(safetensors.torch, "load_file", record("safetensors.torch.load_file"))
    monkeypatch.setattr(safetensors, "safe_open", record("safetensors.safe_open"))
    monkeypatch.setattr(stitch.models.loading, "load_model", record("stitch.load_model"))
    monkeypatch.setattr(Command, "load", record("the subcommand's run function"))
    return calls


def models(root):
    return ["--source-model", str(root / "a"), "--target-model", str(root / "b")]


def texts(root, name="--texts"):
    return [name, str(root / "texts.txt")]


def out(root, name="run"):
    return ["--out", str(root / name)]


def cases(root):
    """(command, argv, phrases the message must hold); the first phrase is always the option as typed."""
    m, t, o = models(root), texts(root), out(root)
    tt = texts(root, "--train-texts")
    ev = texts(root, "--eval-texts")
    fit = ["fit", *m, *tt, "--source-layer", "1", *o]
    sweep = ["sweep", *m, *tt, *ev, *o]
    gen = ["generate", *m, "--prompts", str(root / "texts.txt"), "--source-layer", "1"]
    train = ["train", *m, *tt, "--source-layer", "1", *o]
    cka = ["cka", *m, *t, *o]
    comm = ["communicate", *m, "--tasks", "math", "--ks", "1", "--js", "1", *o]
    align = ["align", "--source-tokenizer", str(root / "a"), "--target-tokenizer", str(root / "b"), *t, *o]
    return {
        "demo": [
            (["--fit-texts", "1"], ["--fit-texts", ">= 2"]),
            (["--fit-texts", "two"], ["--fit-texts", "invalid int value"]),
            (["--eval-texts", "2"], ["--eval-texts", ">= 3"]),
            (["--train-steps", "0"], ["--train-steps", ">= 1"]),
            (["--ridge", "-1"], ["--ridge", ">= 0.0"]),
            (["--kind", "mlp"], ["--kind", "invalid choice"]),
            (["--eval-texts", "x"], ["--eval-texts", "invalid int value"]),
            (["--out", str(root / "a_file")], ["--out", "is an existing file"]),
        ],
        "communicate": [
            ([*comm, "--conditions", "telepathy"], ["--conditions", "telepathy"]),
            ([*comm, "--max-new-tokens", "0"], ["--max-new-tokens", ">= 1"]),
            ([*comm, "--batch-size", "0"], ["--batch-size", ">= 1"]),
            ([*comm, "--n-boot", "0"], ["--n-boot", ">= 1"]),
            ([*comm, "--combine", "max"], ["--combine", "invalid choice"]),
            ([*comm, "--inject", "never"], ["--inject", "invalid choice"]),
            ([*comm, "--positions", "-1", "--source-positions", "1", "2", "3"], ["--source-positions", "3 indices"]),
            (["communicate", *m, "--tasks", "math", "--js", "1", *o], ["--ks", "missing required"]),
            (comm, ["--adapter", "identity needs equal widths (A 32, B 48)"]),
            ([*comm, "--ks", "1", "3"], ["--ks", "layer 3 is out of range for --source-model with 2 blocks"]),
            ([*comm, "--js", "4", "--adapter", str(root / "nope.safetensors")], ["--adapter", "no adapter at"]),
            ([*comm, "--adapter", str(root / "pickled.safetensors")], ["--adapter", "pickle"]),
            ([*comm, "--adapter", str(root / "wide.safetensors")],
             ["--adapter", "wide.safetensors mapping widths 32 → 64; valid: 32 → 48", "--target-model"]),
            ([*comm, "--adapter", str(root / "narrow")],
             ["--adapter", "narrow/adapter.safetensors mapping widths 16 → 48; valid: 32 → 48"]),
            ([*comm, "--adapter", "closed_form"], ["--fit-texts", "learns from paired text"]),
            ([*comm, "--fit-texts", str(root / "texts.txt")], ["--fit-texts", "only --adapter closed_form or trained"]),
            ([*comm, "--adapter", "closed_form", "--fit-texts", str(root / "nope.txt")], ["--fit-texts", "no file at"]),
            ([*comm, "--adapter", "closed_form", *texts(root, "--fit-texts"), "--kind", "mlp"],
             ["--kind", "got 'mlp' for --adapter closed_form"]),
            ([*comm, "--adapter", "trained", *texts(root, "--fit-texts"), "--kind", "token_conditioned"],
             ["--kind", "for --adapter trained"]),
            ([*comm, "--adapter", "trained", *texts(root, "--fit-texts"), "--ridge", "0.1"],
             ["--ridge", "only --adapter closed_form"]),
            ([*comm, "--adapter", "closed_form", *texts(root, "--fit-texts"), "--kind", "procrustes", "--ridge", "0.1"],
             ["--ridge", "only --kind linear or affine"]),
            ([*comm, "--adapter", "trained", *texts(root, "--fit-texts"), "--train-steps", "0"], ["--train-steps", ">= 1"]),
            ([*comm, "--adapter", "closed_form", *texts(root, "--fit-texts"), "--lr", "0.1"],
             ["--lr", "only --adapter trained"]),
            ([*comm, "--kind", "linear"], ["--kind", "only --adapter closed_form or trained"]),
            ([*comm, "--ks", "-1"], ["--ks", "expected layers >= 0"]),
            ([*comm, "--out", str(root / "a_file")], ["--out", "is an existing file"]),
            (["communicate", "--source-model", str(root / "nope"), *m[2:], "--tasks", "math", "--ks", "1", "--js", "1", *o],
             ["--source-model", "no model directory at"]),
        ],
        "report": [
            (["report", str(root / "nope")], ["--run-dir", "no directory at"]),
            (["report", str(root / "a_file")], ["--run-dir", "no directory at"]),
            (["report", str(root / "a"), "--plotlyjs", "cdn"], ["--plotlyjs", "invalid choice"]),
            (["report", str(root / "a"), "--out", str(root / "a")], ["--out", "is a directory"]),
            (["report", str(root / "a"), "--out", str(root)], ["--out", "is a directory"]),
            (["report", str(root / "a"), "--bogus"], ["--bogus", "unrecognized"]),
            (["report", str(root / "a"), "--plotlyjs"], ["--plotlyjs", "expected one argument"]),
            (["report", str(root / "a"), "--config", str(root / "nope.yaml")], ["--config", ""]),
        ],
        "align": [
            ([*align[:5], *o], ["--texts", "missing required"]),
            ([*align[:5], "--texts", str(root / "nope.txt"), *o], ["--texts", "no file at"]),
            ([*align[:5], "--texts", str(root / "empty.txt"), *o], ["--texts", "holds no texts"]),
            ([*align[:5], "--texts", str(root / "bad.jsonl"), *o], ["--texts", "line 2: not JSON"]),
            (["align", "--source-tokenizer", str(root / "nope"), *align[3:]], ["--source-tokenizer", "no tokenizer directory"]),
            (["align", "--source-tokenizer", str(root / "a"), "--target-tokenizer", str(root / "a_file"), *align[5:]], ["--target-tokenizer", "is a file"]),
            ([*align, "--map-chars", "0"], ["--map-chars", ">= 1, got 0"]),
            ([*align, "--chars-per-line", "-3"], ["--chars-per-line", ">= 1"]),
            ([*align[:-1], str(root / "done")], ["--out", "--overwrite"]),
            ([*align, "--map-char", "3"], ["unrecognized arguments: --map-char"]),  # no abbreviations
        ],
        "cka": [
            ([*cka, "--batch-size", "0"], ["--batch-size", ">= 1, got 0"]),
            ([*cka, "--null-permutations", "-1"], ["--null-permutations", ">= 0"]),
            ([*cka, "--seed", "-2"], ["--seed", ">= 0"]),
            ([*cka, "--pairing", "tokens"], ["--pairing", "invalid choice"]),
            ([*cka, "--measure", "cosine"], ["--measure", "invalid choice"]),
            ([*cka, "--device", "cuda:99"], ["--device", "is not available"]),
            ([*cka, "--device", "gpu"], ["--device", "is not a device"]),
            ([*cka, "--dtype", "fp8"], ["--dtype", "invalid choice"]),
            (["cka", "--source-model", str(root / "nope"), *cka[3:]], ["--source-model", "no model directory"]),
            (["cka", *m[:3], "not a hub id!", *cka[5:]], ["--target-model", "not a hub id"]),
        ],
        "fit": [
            ([*fit, "--kind", "procrustes", "--ridge", "0.1"], ["--ridge", "--kind procrustes"]),
            ([*fit, "--scale"], ["--scale", "only --kind procrustes"]),
            ([*fit[:-2], "--source-layer", "3", *o], ["--source-layer", "valid: 0..2"]),
            ([*fit, "--target-layer", "4"], ["--target-layer", "valid: 0..3"]),
            ([*fit, "--source-layer", "-1"], ["--source-layer", ">= 0"]),
            ([*fit, "--ridge", "-1"], ["--ridge", ">= 0.0"]),
            ([*fit, "--batch-size", "0"], ["--batch-size", ">= 1"]),
            ([*fit, "--kind", "lowrank"], ["--kind", "invalid choice"]),
            (["fit", *m, "--train-texts", str(root / "nope.txt"), *fit[7:]], ["--train-texts", "no file at"]),
            ([*fit[:-1], str(root / "done.safetensors")], ["--out", "--overwrite"]),
            ([*fit, *t], ["unrecognized arguments: --texts"]),
        ],
        "sweep": [
            ([*sweep, "--source-layers", "0", "5"], ["--source-layers", "valid: 0..2"]),
            ([*sweep, "--source-layers", "1", "1"], ["--source-layers", "each layer once"]),
            ([*sweep, "--kind", "procrustes", "--ridge", "1"], ["--ridge", "--kind procrustes"]),
            ([*sweep, "--match", "diagonal"], ["--match", "invalid choice"]),
            ([*sweep[:7], "--eval-texts", str(root / "nope.txt"), *o], ["--eval-texts", "no file at"]),
            (["sweep", *tt, *ev, *o], ["--source-model", "required (or give --splice"]),
            (["sweep", *tt, *ev, *o, "--splice", str(root / "nowhere")], ["--splice", "no saved splice"]),
            ([*sweep, "--batch-size", "0"], ["--batch-size", ">= 1"]),
            ([*sweep, "--splice", str(root / "splice_wide")],  # the given models must fit the splice's adapter
             ["--splice", "splice_wide/adapter.safetensors mapping widths 32 → 64; valid: 32 → 48"]),
            ([*sweep, "--pairs", "1:9"], ["--pairs", "valid: 0..3"]),
            ([*sweep, "--pairs", "8"], ["--pairs", "expected N:M"]),
            ([*sweep, "--alignment", "diagonal"], ["--alignment", "not one of"]),
            ([*sweep[:-1], str(root / "a_file")], ["--out", "is an existing file"]),
        ],
        "generate": [
            (gen, ["--adapter", "required when the widths differ (A 32, B 48)"]),
            ([*gen, "--adapter", str(root / "adapter.pt")], ["--adapter", "no adapter at"]),
            ([*gen, "--adapter", str(root / "pickled.safetensors")], ["--adapter", "never unpickles"]),
            ([*gen, "--adapter", str(root / "nope.safetensors")], ["--adapter", "no adapter at"]),
            ([*gen, "--adapter", str(root / "wide.safetensors")],
             ["--adapter", "wide.safetensors mapping widths 32 → 64; valid: 32 → 48, the d_model of --source-model"]),
            ([*gen, "--target-layer", "2", "--adapter", str(root / "narrow")],
             ["--adapter", "mapping widths 16 → 48; valid: 32 → 48"]),
            (["generate", "--splice", str(root / "splice_wide"), *m, *gen[5:7]],
             ["--splice", "splice_wide/adapter.safetensors mapping widths 32 → 64; valid: 32 → 48"]),
            ([*gen, "--max-new-tokens", "0"], ["--max-new-tokens", ">= 1"]),
            (["generate", "--splice", str(root / "splice"), *gen[5:]], ["--source-layer", "already holds it"]),
            (["generate", "--splice", str(root / "splice"), *gen[5:7], "--adapter", str(root / "x")], ["--adapter", "already holds it"]),
            ([*gen[:-1], "9"], ["--source-layer", "valid: 0..2"]),
            ([*gen, "--policy", "some"], ["--policy", "invalid choice"]),
            ([*gen, "--temperature", "0"], ["--temperature", "> 0.0"]),
            ([*gen, "--stop-strings", ""], ["--stop-strings", "non-empty"]),
            ([*gen, "--out", str(root / "done")], ["--out", "is a directory"]),
            ([*gen[:5], "--prompts", str(root / "nope.txt"), *gen[7:]], ["--prompts", "no file at"]),
        ],
        "train": [
            ([*train, "--lr", "0"], ["--lr", "> 0.0"]),
            ([*train, "--steps", "2", "--epochs", "1"], ["--steps, --epochs", "one or the other"]),
            ([*train, "--kind", "mlp", "--init", "fit"], ["--init", "closed-form kind"]),
            ([*train, "--kind", "lowrank", "--adapter-options", "rank=999"], ["--adapter-options", "valid: 1..32"]),
            ([*train, "--adapter-options", "foo=1"], ["--adapter-options", "valid keys"]),
            ([*train, "--batch-size", "100"], ["--batch-size", "holds 3"]),
            ([*train[:-4], "--source-layer", "5", *o], ["--source-layer", "valid: 0..2"]),
            ([*train, "--device", "cuda:99"], ["--device", "is not available"]),
            ([*train[:-1], str(root / "a_file")], ["--out", "is an existing file"]),
            ([*train, "--warmup", "-1"], ["--warmup", ">= 0"]),
        ],
    }


def test_every_subcommand_has_a_table():
    assert set(cases(Path("/x"))) == set(COMMANDS)
    assert all(len(rows) >= 8 for rows in cases(Path("/x")).values())


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_options_exit_2_before_anything_loads(world, no_loading, capsys, command):
    for argv, phrases in cases(world)[command]:
        argv = argv if argv[0] == command else [command, *argv]
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (argv, err)
        assert err.startswith("usage: stitch"), err  # the usage line, then the message
        message = err.strip().splitlines()[-1]
        assert all(p in message for p in phrases), (argv, message)
    assert no_loading == []


def test_a_cached_hub_model_fixes_the_adapter_widths_before_loading(world, no_loading, monkeypatch, tmp_path, capsys):
    """A hub id's width comes from its cached config.json (HF_HUB_OFFLINE): no download, no weights."""
    import huggingface_hub.constants

    snapshot = tmp_path / "models--org--tiny-b" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(world / "b" / "config.json", snapshot / "config.json")
    (tmp_path / "models--org--tiny-b" / "refs").mkdir()
    (tmp_path / "models--org--tiny-b" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["communicate", "--source-model", str(world / "a"), "--target-model", "org/tiny-b", "--tasks", "math",
            "--ks", "1", "--js", "1", "--out", str(tmp_path / "o"), "--adapter", str(world / "wide.safetensors")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and no_loading == []
    assert "valid: 32 → 48, the d_model of --source-model" in message and "--target-model org/tiny-b" in message


def test_a_width_unknown_before_loading_is_left_to_the_load(world, no_loading, tmp_path):
    """No width in config.json (an architecture whose keys the preflight does not know): no refusal here,
    and the header's widths still read; the check after loading (`Splice`) decides (tests/test_cli.py)."""
    from stitch.cli.generate_config import GenerateConfig
    from stitch.cli.preflight import preflight

    mystery = tmp_path / "mystery"
    mystery.mkdir()
    (mystery / "config.json").write_text('{"model_type": "mystery", "num_hidden_layers": 3, "width": 48}')
    config = GenerateConfig(source_model=str(world / "a"), target_model=str(mystery), source_layer=1,
                            prompts=str(world / "texts.txt"), adapter=str(world / "wide.safetensors"))
    found = preflight(config)
    assert (found["adapter"]["d_source"], found["adapter"]["d_target"]) == (32, 64)
    assert found["target_model"].d_model is None and no_loading == []
    with pytest.raises(ValueError, match=r"--adapter: got .*wide.safetensors mapping widths 32 → 64; valid: any → 48"):
        preflight(dataclasses.replace(config, source_model=str(mystery), target_model=str(world / "b")))  # B's known


def fresh(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


HEAVY = "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'analyses'}))"


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"], ["train", "--help"], ["--version"]])
def test_help_imports_no_torch_or_transformers(argv):
    done = fresh(f"import sys\nfrom stitch.cli.main import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n{HEAVY}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "stitch" in done.stdout


def test_a_bad_option_imports_no_model_code(world):
    argv = ["fit", *models(world), *texts(world, "--train-texts"), "--source-layer", "1", "--out", "x"]
    code = f"import sys\nfrom stitch.cli.main import main\ntry:\n    main({[*argv, '--kind', 'procrustes', '--ridge', '1']!r})\nexcept SystemExit as e:\n    print(e.code)\n{HEAVY}"
    done = fresh(code)
    assert done.stdout.split() == ["2", "[]"], done.stdout + done.stderr
    assert "--ridge: only --kind linear, affine or token_conditioned" in done.stderr


def test_import_stitch_is_lazy_and_keeps_every_public_name():
    done = fresh(f"import sys, warnings\nimport stitch\n{HEAVY}\nwarnings.simplefilter('error')\nimport stitch.fit_models")
    assert done.stdout.strip() == "[]" and "DeprecationWarning" in done.stderr  # the alias finder is installed
    for name in stitch.__all__:
        assert getattr(stitch, name) is not None
    from stitch import Splice, TrainConfig, load_model  # noqa: F401  `from stitch import X` works too

    assert stitch.Splice is stitch.splice.splice.Splice and stitch.train_adapter is stitch.training.loop.train


def test_python_dash_m_stitch_and_version():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "stitch", "--version"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0 and done.stdout.strip() == f"stitch {stitch.__version__}"


def test_the_torch_free_names_agree_with_the_registries():
    import inspect

    from analyses.layer_similarity import PAIRINGS
    from analyses.similarity import MEASURES
    from stitch import kinds
    from stitch.adapters import ADAPTERS, CLOSED_FORM
    from stitch.cli import configs
    from stitch.splice.generate import POLICIES
    from stitch.splice.injection import INJECTIONS
    from stitch.training.precision import AUTOCAST

    options = {
        kind: tuple(p for p in inspect.signature(cls).parameters if p not in ("d", "d_source", "d_target"))
        for kind, cls in ADAPTERS.items()
    }
    assert options == kinds.ADAPTER_OPTIONS
    assert (CLOSED_FORM, tuple(POLICIES), tuple(INJECTIONS)) == (kinds.CLOSED_FORM, kinds.POLICIES, kinds.INJECTIONS)
    assert tuple(AUTOCAST) == kinds.AUTOCAST
    assert (configs.PAIRINGS, configs.MEASURES) == (PAIRINGS, tuple(MEASURES))
    from analyses.controls import CONTROLS
    from stitch.adapters.fit import fit_option_names

    assert configs.CONTROLS == tuple(CONTROLS)
    assert {k: tuple(fit_option_names(k)) for k in CLOSED_FORM} == kinds.FIT_OPTIONS
    from analyses import communication
    from stitch.splice.combine import COMBINES
    from stitch.splice.communicate import INJECT
    from stitch.splice.positions import SELECTIONS

    assert (kinds.COMBINE_NAMES, kinds.POSITION_SELECTIONS, kinds.INJECT) == (tuple(COMBINES), tuple(SELECTIONS), INJECT)
    torch_free = (kinds.CONDITIONS, kinds.ADAPTER_METHODS, kinds.COMMUNICATION_FIT_KINDS)
    assert torch_free == (communication.CONDITIONS, communication.ADAPTER_METHODS, communication.FIT_KINDS)
    from stitch.adapters.io import WEIGHTS_NAME, adapter_paths
    from stitch.cli.preflight import ADAPTER_WEIGHTS, adapter_weights

    assert ADAPTER_WEIGHTS == WEIGHTS_NAME
    for path in ("runs/l16.SAFETENSORS", "runs/l16.safetensors", "runs/l16"):  # the file the loader reads
        assert adapter_weights(path) == adapter_paths(path)[0]


def test_shared_options_mean_one_thing_everywhere():
    """--kind, --batch-size, --progress, --overwrite, --dtype, --device: one default wherever they appear."""
    defaults = {}
    for command in COMMANDS.values():
        for field in dataclasses.fields(command.config):
            if field.name in ("kind", "batch_size", "progress", "overwrite", "dtype", "device"):
                defaults.setdefault(field.name, set()).add(field.default)
    assert defaults == {
        "kind": {"affine"}, "batch_size": {8}, "progress": {True}, "overwrite": {False},
        "dtype": {"auto"}, "device": {"auto"},
    }  # fmt: skip
    trains = [c.config.__name__ for c in COMMANDS.values() if "train_texts" in {f.name for f in dataclasses.fields(c.config)}]
    assert set(trains) == {"FitConfig", "SweepConfig", "TrainCommandConfig"}
