"""stitch.registry.Registry, and every registry of the project built on it (clashes refused, names in order)."""

import os
import pathlib
import subprocess
import sys

import pytest

from analyses.controls import CONTROLS
from analyses.run_report import SECTION_KINDS
from analyses.similarity import MEASURES
from stitch.adapters import ADAPTERS, Affine, register_adapter
from stitch.registry import Registry
from stitch.splice.combine import COMBINES, Combine, combine_for, register_combine
from stitch.splice.injection import INJECTIONS, Residual, injection_for, register_injection
from stitch.splice.policies import POLICIES, Restitch, policy_for, register_policy
from stitch.splice.positions import SELECTIONS
from stitch.training.losses import OBJECTIVES, parse_objective

ROOT = pathlib.Path(__file__).resolve().parents[1]


class Sum:
    name = "sum"


class Mean:
    name = "mean"


def test_register_decorates_and_keeps_registration_order():
    reg = Registry("combine")
    assert reg.register(Sum) is Sum  # usable as a class decorator
    reg.register(Mean, "average")
    assert reg.names() == ("sum", "mean", "average") == tuple(reg) and list(reg) == ["sum", "mean", "average"]
    assert len(reg) == 3 and reg["average"] is reg["mean"] is Mean and reg.lookup("sum") is Sum
    assert dict(reg.items()) == {"sum": Sum, "mean": Mean, "average": Mean}
    assert "sum" in reg and "max" not in reg and ["sum"] not in reg  # an unhashable value is no name, not a crash
    assert reg.get("max") is None  # a Mapping's own .get keeps its meaning
    assert repr(reg) == "Registry('combine', ['sum', 'mean', 'average'])"


def test_entries_and_key_attribute():
    class Wide:
        kind = "wide"

    assert Registry("kind", key="kind").register(Wide) is Wide
    reg = Registry("measure", {"b": len, "a": abs})
    assert reg.names() == ("b", "a") and reg["a"] is abs  # entry order, not sorted


def test_a_taken_name_is_refused_and_nothing_is_half_registered():
    reg = Registry("combine")
    reg.register(Sum)
    reg.register(Sum)  # the same item again: a no-op (a module imported twice)
    other = type("Sum2", (), {"name": "sum"})
    with pytest.raises(ValueError, match=r"^combine: 'sum' is already registered to Sum; valid: a name not in \['sum'\]$"):
        reg.register(other)
    with pytest.raises(ValueError, match="'sum' is already registered to Sum"):
        reg.register(Mean, "sum")  # an alias clashing
    assert reg.names() == ("sum",) and reg["sum"] is Sum  # "mean" was not added by the refused call
    with pytest.raises(ValueError, match="'x' is already registered to int"):
        Registry("thing", {"x": 1}).register(2, name="x")  # unnamed items are named by their type


@pytest.mark.parametrize(
    ("name", "arg", "message"),
    [
        ("max", None, "combine: 'max' is not one of ['sum', 'mean']"),
        ("max", "--combine", "--combine: 'max' is not one of ['sum', 'mean']"),
        (["sum"], None, "combine: ['sum'] is not one of ['sum', 'mean']"),
        (None, None, "combine: None is not one of ['sum', 'mean']"),
    ],
)
def test_an_unknown_name_lists_the_valid_ones_in_order(name, arg, message):
    reg = Registry("combine")
    reg.register(Sum)
    reg.register(Mean)
    with pytest.raises(ValueError) as err:
        reg.lookup(name, arg=arg)
    assert str(err.value) == message


def test_the_project_registries_are_registries_in_their_documented_order():
    assert INJECTIONS.names() == ("residual", "inputs_embeds", "hybrid")
    assert COMBINES.names() == ("replace", "sum", "mean")
    assert POLICIES.names() == ("prompt", "restitch", "all") and POLICIES["all"] is Restitch
    assert OBJECTIVES.names() == ("ce", "kl", "mse", "cosine", "infonce", "soft_contrastive")
    assert ADAPTERS.names()[:3] == ("identity", "linear", "affine") and CONTROLS.names() == ("random-init",)
    assert SELECTIONS.names() == ("all", "shared", "last") and MEASURES.names()[:2] == ("linear_cka", "debiased_cka")
    assert SECTION_KINDS.names() == ("figure", "table", "sweep", "training", "communication")
    registries = (INJECTIONS, COMBINES, POLICIES, OBJECTIVES, ADAPTERS, CONTROLS, SELECTIONS, MEASURES, SECTION_KINDS)
    assert all(isinstance(r, Registry) for r in registries)


@pytest.mark.parametrize(
    ("lookup", "message"),
    [
        (lambda: injection_for("attn"), "injection: 'attn' is not one of ['residual', 'inputs_embeds', 'hybrid']"),
        (lambda: combine_for("max"), "combine: 'max' is not one of ['replace', 'sum', 'mean']"),
        (lambda: policy_for("every"), "policy: 'every' is not one of ['prompt', 'restitch', 'all']"),
        (lambda: parse_objective("nope:x=1"), "objectives: 'nope' is not one of ['ce', 'kl', 'mse', 'cosine', "),
    ],
)
def test_the_project_lookups_keep_their_messages(lookup, message):
    with pytest.raises(ValueError) as err:
        lookup()
    assert str(err.value).startswith(message)


def test_the_project_registries_refuse_a_second_strategy_under_a_taken_name():
    """The old injection, combine and policy registries replaced a strategy silently; now none can."""

    class Impostor(Combine):
        name = "sum"

        def combine(self, own, mapped):
            return own - mapped

    clashes = [
        (lambda: register_combine(Impostor()), "combine: 'sum' is already registered to Sum"),
        (lambda: register_injection(type("Fake", (Residual,), {})()), "injection: 'residual' is already registered"),
        (lambda: register_policy(type("All", (Restitch,), {"name": "everything"})), "policy: 'all' is already"),
        (lambda: register_adapter(type("Affine2", (Affine,), {})), "adapter kind: 'affine' is already registered"),
        (lambda: OBJECTIVES.register(type("CE", (), {"name": "ce"})), "objective: 'ce' is already registered"),
    ]
    before = {r.kind: dict(r) for r in (COMBINES, INJECTIONS, POLICIES, ADAPTERS, OBJECTIVES)}
    for register, message in clashes:
        with pytest.raises(ValueError, match=message):
            register()
    assert {r.kind: dict(r) for r in (COMBINES, INJECTIONS, POLICIES, ADAPTERS, OBJECTIVES)} == before
    assert register_adapter(Affine) is Affine  # re-registering the same class stays harmless


def test_the_registry_imports_no_torch():
    code = "import sys\nimport stitch.registry\nprint(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy'}))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
