"""Meet TransformerLens and nnsight users where they are: load their wrapped models, splice inside nnsight.

    >>> A = stitch.load_model(bridge)                    # a TransformerLens TransformerBridge: its HF module
    >>> B = stitch.load_model(language_model)            # an nnsight LanguageModel / NNsight: its HF module
    >>> ns = NNsightSplice(stitch.Splice(A, B, source_layer=2, target_layer=1))
    >>> with ns.trace(["some text"]):
    ...     ns.apply()                                   # A's layer-2 state -> adapter -> B's layer-1 input
    ...     ns.target.model.layers[2].output[:] *= 0.5   # any nnsight intervention of your own
    ...     logits = ns.target.output.logits.save()

Neither library is imported here unless the caller asks for it: a wrapper is recognised through
`sys.modules` (an object cannot be a TransformerBridge unless transformer_lens is loaded), and
importing nnsight has process-wide side effects (it mounts `.save` on every object).
Weights are never copied; the HF module inside the wrapper is used as it is.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

from jaxtyping import Float, Int
from torch import Tensor, nn

from stitch.batch import Batch
from stitch.checks import check_layer
from stitch.losses import mean_cross_entropy
from stitch.models.arch import ArchSpec, arch_for
from stitch.models.hooked import HookedLM

_BRIDGE = ("transformer_lens.model_bridge.transformer_bridge", "TransformerBridge")
_BRIDGE_CORE = ("transformer_lens.model_bridge.bridge_core", "BridgeCore")
_ENVOY = ("nnsight.intervention.envoy", "Envoy")


# ---- recognising and unwrapping ------------------------------------------------------------------


def _loaded_class(location: tuple[str, str]) -> type | None:
    module = sys.modules.get(location[0])
    return getattr(module, location[1], None) if module is not None else None


def _is_a(obj, location: tuple[str, str]) -> bool:
    cls = _loaded_class(location)
    return cls is not None and isinstance(obj, cls)


def unwrap_model(obj) -> tuple[nn.Module, Any] | None:
    """`(hf_model, tokenizer or None)` inside a TransformerLens bridge or nnsight model, else None.

    >>> hf_model, tokenizer = unwrap_model(TransformerBridge.boot_transformers(path))
    >>> unwrap_model(hf_model) is None               # not a wrapper: load_model takes it as it is
    True
    """
    if _is_a(obj, _BRIDGE) or _is_a(obj, _BRIDGE_CORE):
        return _unwrap_bridge(obj)
    if _is_a(obj, _ENVOY):
        return _unwrap_envoy(obj)
    return None


def _unwrap_bridge(bridge) -> tuple[nn.Module, Any]:
    # The bridge has replaced the HF submodules by its own wrappers, which compute the HF forward
    # unchanged -- unless compatibility mode has folded and centred the weights in place.
    if getattr(bridge, "compatibility_mode", False):
        raise ValueError(
            "model: this TransformerBridge is in compatibility mode (enable_compatibility_mode() folds norms "
            "and centres weights in place, so its HF module no longer computes the checkpoint's residual "
            "stream); pass a freshly booted bridge (TransformerBridge.boot_transformers) or the HF model"
        )
    try:
        hf_model = bridge.original_model
    except AttributeError as err:
        raise TypeError(
            f"model: this {type(bridge).__name__} has no local torch module (remote backend such "
            "as vLLM); stitch needs the HF model itself"
        ) from err
    return hf_model, getattr(bridge, "tokenizer", None)


def _unwrap_envoy(envoy) -> tuple[nn.Module, Any]:
    if envoy.parent is not None:
        raise TypeError(
            f"model: got the nnsight envoy of the submodule {envoy.path!r}; pass the root model "
            "(the object NNsight(...) or LanguageModel(...) returned)"
        )
    if getattr(envoy, "dispatched", True) is False:
        envoy.dispatch()  # built on the meta device: load the real weights nnsight would load at first trace
    return envoy._module, envoy.__dict__.get("tokenizer")


def to_nnsight(model):
    """An nnsight `TransformersModel` over a HookedLM's own HF module (no copy), for nnsight traces.

        >>> nB = to_nnsight(B)
        >>> with nB.trace(**trace_inputs(batch)):
        ...     x = nB.model.layers[1].input.save()

    The tokenizer is copied because nnsight re-configures the one it is given (left padding, pad token).
    """
    if not isinstance(model, HookedLM):
        raise TypeError(
            f"model: expected a stitch.HookedLM (use stitch.load_model), got {type(model).__name__}"
        )
    try:
        from nnsight.modeling.transformers import TransformersModel
    except ImportError as err:
        raise ImportError("to_nnsight needs nnsight>=0.8: pip install 'stitch[interop]'") from err
    return TransformersModel(model.model, tokenizer=copy.deepcopy(model.tokenizer))


def trace_inputs(batch: Batch) -> dict[str, Tensor | bool]:
    """The keyword inputs stitch gives the HF forward for `batch`, for `envoy.trace(**trace_inputs(batch))`.

    >>> with nB.trace(**trace_inputs(B.encode(["text"]))): ...
    """
    return {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "position_ids": batch.position_ids,
        "use_cache": False,
    }


# ---- layers inside an nnsight trace ---------------------------------------------------------------


def _layout(envoy) -> tuple[ArchSpec, Any]:
    spec = arch_for(envoy._module)
    return spec, envoy.get(spec.blocks)


def read_layer(envoy, layer: int) -> Float[Tensor, "batch pos d_model"]:
    """Inside a trace of `envoy`: the residual stream at stitch layer ℓ (block ℓ's input; ℓ = L: final norm's).

    >>> with nA.trace(**trace_inputs(batch)):
    ...     x = read_layer(nA, 2).save()                 # == A.residuals(batch, [2])[2]
    """
    spec, blocks = _layout(envoy)
    layer = check_layer("layer", layer, len(blocks))
    return envoy.get(spec.final_norm).input if layer == len(blocks) else blocks[layer].input


def write_layer(envoy, layer: int, value: Float[Tensor, "batch pos d_model"]) -> None:
    """Inside a trace of `envoy`: make `value` the stream at layer ℓ; blocks [0, ℓ) are skipped, not run.

    >>> with nB.trace(**trace_inputs(batch)):
    ...     write_layer(nB, 1, x)                        # B runs blocks [1, L) on x
    ...     logits = nB.output.logits.save()
    """
    spec, blocks = _layout(envoy)
    layer = check_layer("layer", layer, len(blocks))
    for index in range(layer):
        blocks[index].skip(value)  # a skipped block returns `value`, so the next one reads it
    if layer == len(blocks):
        envoy.get(spec.final_norm).input = value
    else:
        blocks[layer].input = value


# ---- the splice, expressed in nnsight ------------------------------------------------------------


def nnsight_splice(
    source,
    target,
    source_inputs: dict,
    source_layer: int,
    target_layer: int | None = None,
    adapter=None,
    injection: str = "residual",
) -> Float[Tensor, "batch pos d_target"]:
    """Inside a trace of `target`: A's layer-N state -> `adapter` -> B's layer-M input; returns what B reads.

        >>> with nB.trace(**trace_inputs(batch)):
        ...     nnsight_splice(nA, nB, trace_inputs(batch), source_layer=2, target_layer=1, adapter=proj)
        ...     nB.model.layers[2].output[:] *= 0.5          # compose with your own interventions
        ...     logits = nB.output.logits.save()

    `source` runs blocks [0, N) only, in a trace nested in the caller's; `target` skips blocks [0, M).
    `adapter` is any callable on `[batch, pos, d_source]` (default: identity); with
    `injection="inputs_embeds"` the adapted states replace B's embedding output instead (the baseline).
    """
    if injection not in ("residual", "inputs_embeds"):
        raise ValueError(f"injection: {injection!r} is not one of ['residual', 'inputs_embeds']")
    states = _source_states(source, source_inputs, source_layer)
    mapped = states if adapter is None else adapter(states)
    mapped = mapped.to(next(target._module.parameters()).dtype)
    if injection == "inputs_embeds":
        target.get(arch_for(target._module).embed).output = mapped
    else:
        write_layer(target, source_layer if target_layer is None else target_layer, mapped)
    return mapped


def _source_states(source, inputs: dict, layer: int) -> Tensor:
    import nnsight  # the caller is inside an nnsight trace, so nnsight is already loaded

    with source.trace(**inputs) as tracer:
        states = nnsight.save(read_layer(source, layer))
        tracer.stop()  # blocks from N on never run
    return states


class NNsightSplice:
    """A `stitch.Splice` expressed in nnsight, so it composes with your own interventions in one trace.

        >>> ns = NNsightSplice(stitch.Splice(A, B, source_layer=2, target_layer=1, adapter=proj))
        >>> with ns.trace(["some text", "more text"]):
        ...     ns.apply()
        ...     logits = ns.target.output.logits.save()
        >>> loss = ns.loss(logits)                           # == the Splice's loss without interventions

    `ns.source` / `ns.target` are nnsight models over A's and B's HF modules (pass your own to reuse
    them); alignment, adapter and injection mode are the splice's own, so logits equal `splice(texts)`.
    """

    def __init__(self, splice, source=None, target=None):
        self.splice = splice
        self.source = source if source is not None else to_nnsight(splice.A)
        self.target = target if target is not None else to_nnsight(splice.B)
        for name, envoy, model in (("source", self.source, splice.A), ("target", self.target, splice.B)):
            if getattr(envoy, "_module", None) is not model.model:
                raise ValueError(
                    f"{name}: must wrap the splice's own HF module ({model.name!r}); "
                    f"got {type(envoy).__name__} over another module"
                )
        self.aligned = None

    def trace(self, texts, **kwargs):
        """B's nnsight trace on the splice's target batch for `texts`; call `apply()` inside it."""
        self.aligned = self.splice.align(texts)
        return self.target.trace(**trace_inputs(self.splice.target_batch(self.aligned)), **kwargs)

    def apply(self) -> Float[Tensor, "batch pos d_target"]:
        """Inside `with ns.trace(texts):` -- the splice itself; returns the states B reads at layer M."""
        if self.aligned is None:
            raise RuntimeError(
                "apply: call it inside `with ns.trace(texts):`, which encodes and aligns the texts"
            )
        aligned, sp = self.aligned, self.splice
        return nnsight_splice(
            self.source,
            self.target,
            trace_inputs(aligned.source),
            sp.source_layer,
            sp.target_layer,
            lambda states: sp.map_states(states, aligned),
            sp.injection,
        )

    def labels(self) -> Int[Tensor, "batch pos"]:
        """The labels `Splice` scores the last traced texts on (B's next tokens, or source-grid labels)."""
        if self.aligned is None:
            raise RuntimeError("labels: trace some texts first (`with ns.trace(texts): ...`)")
        return self.splice.labels(self.aligned)

    def loss(self, logits: Float[Tensor, "batch pos vocab"]) -> Tensor:
        """Mean next-token loss of `logits` on `labels()`, normalised exactly as `Splice` does."""
        return mean_cross_entropy(logits, self.labels())
