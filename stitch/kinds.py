"""The names of stitch's registered kinds, importable without torch, so configs validate before model code loads.

    >>> from stitch.kinds import CLOSED_FORM, ADAPTER_OPTIONS
    >>> "affine" in CLOSED_FORM, ADAPTER_OPTIONS["lowrank"]
    (True, ('rank', 'scale', 'bias'))

The registries themselves (each a `stitch.registry.Registry`: `stitch.adapters.ADAPTERS`,
`stitch.splice.INJECTIONS`, the combines, the generation policies) live beside the torch code;
tests/test_cli_validation.py checks that these names agree with them. A kind registered at run time is usable
from Python; the command line offers the kinds listed here.
"""

from __future__ import annotations

# every adapter kind with its constructor keywords other than the widths (d, d_source, d_target)
ADAPTER_OPTIONS: dict[str, tuple[str, ...]] = {
    "identity": (),
    "linear": (),
    "affine": (),
    "projection": ("bias", "init"),
    "procrustes": ("scale", "translation"),
    "lowrank": ("rank", "scale", "bias"),
    "mlp": ("hidden", "activation", "norm"),
    "token_conditioned": ("window",),
    "token_conditioned_mlp": ("window", "hidden", "activation"),
    "group": ("members",),  # several layer pairs' adapters as one (checkpoints of multi-pair runs)
}
CLOSED_FORM = ("procrustes", "linear", "affine", "token_conditioned")  # kinds with a closed-form fit
FIT_OPTIONS = {
    "procrustes": ("scale", "translation"), "linear": ("ridge",), "affine": ("ridge",),
    "token_conditioned": ("ridge", "window"),
}  # fmt: skip
POSITION_SELECTIONS = ("all", "shared", "last")  # stitch.splice.positions.SELECTIONS; or token indices "0,-1"
TRAINABLE = tuple(sorted(kind for kind in ADAPTER_OPTIONS if kind not in ("identity", "group")))
DEFAULT_KIND = "affine"  # the one default `--kind` of every command that makes an adapter
# adapter options bounded by a model width: option -> what bounds it (checked once widths are known)
WIDTH_BOUNDED = {"rank": "min(d_source, d_target)"}

INJECTIONS = ("residual", "inputs_embeds", "hybrid")
ALIGNMENTS = ("target", "source")
AUTOCAST = ("none", "bf16", "fp16")  # stitch.training.precision.AUTOCAST
POLICIES = ("prompt", "restitch", "all")  # "all": an alias of "restitch"
DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


def fit_option_names(kind: str) -> list[str]:
    """The options a closed-form fit of `kind` takes (`stitch.adapters.fit.fit_option_names`, torch-free)."""
    if kind not in FIT_OPTIONS:
        raise ValueError(f"kind: {kind!r} has no closed-form fit; closed-form kinds: {list(CLOSED_FORM)}")
    return list(FIT_OPTIONS[kind])


def check_fit_options(kind: str, options: dict) -> None:
    """`stitch.adapters.fit.check_fit_options` without torch: unknown options, the ridge, the booleans."""
    allowed = fit_option_names(kind)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"options: {unknown} are not options of a {kind} fit; valid options: {allowed}")
    ridge = options.get("ridge", 0.0)
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not 0 <= ridge < float("inf"):
        raise ValueError(
            f"ridge: got {ridge!r}; valid: a finite number >= 0 (a fraction of x's mean variance per dimension)"
        )
    for name in ("scale", "translation"):
        if name in options and not isinstance(options[name], bool):
            raise TypeError(f"{name}: got {options[name]!r}; valid: true or false")

# activation communication (`stitch communicate`)
COMBINE_NAMES = ("replace", "sum", "mean")  # stitch.splice.combine.COMBINES
INJECT = ("prompt", "generated")  # stitch.splice.communicate.INJECT
CONDITIONS = ("activation", "random", "none", "a_context", "a_prompt", "natural_language")
ADAPTER_METHODS = ("identity", "closed_form", "trained")  # how `pair_adapters` makes each (k, j)'s adapter
COMMUNICATION_FIT_KINDS = ("procrustes", "linear", "affine")  # closed-form kinds a communication can use
COMMUNICATION_TRAINED_KINDS = tuple(k for k in TRAINABLE if not k.startswith("token_conditioned"))  # no conditioning input
