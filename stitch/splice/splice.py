"""Splice: run A up to layer N, map its stream through an adapter, and let B finish from layer M.

    >>> sp = stitch.Splice(A, B, source_layer=16, target_layer=16, adapter=None, alignment="target")
    >>> out = sp(["some text", "more text"])           # out.logits, out.labels, out.loss
    >>> out.loss.backward()                              # gradients reach the adapter only

A runs blocks [0, N) and nothing more; B runs blocks [M, L_B), its final norm and unembedding. With
`injection="inputs_embeds"` the adapted states are given to B as `inputs_embeds` (the flawed baseline kept
for comparison; equal to M = 0 for models whose embedding output is not rescaled or position-shifted).

    >>> stitch.Splice(A, B, 16, positions="shared")        # A's states at shared positions, B's own elsewhere
    >>> stitch.Splice(A, B, 16, injection="hybrid")       # B reads its own tokens below M; A only where shared
    >>> stitch.Splice(A, B, 16, adapter=TokenConditioned(A.d_model, B.d_model))   # + B's tokens since the boundary
    >>> sp.blocks_run                                     # {"A": (0, 16), "B": (0, L_B)} when B's own states are needed

`positions` ("all", "shared", "last", token indices or a bool mask; default: the injection's own, "all" except
for "hybrid") chooses where A's mapped states are written; the other positions keep B's own states, which needs
B's blocks [0, M) as well (`blocks_run` says which blocks ran). A token-conditioned adapter
(`stitch.adapters.conditioned`) also reads B's input embeddings of the B tokens read since the last shared
boundary (the embedding module only: no block of B below M runs for them).

Devices: A and B may live on different devices, or be sharded with `device_map`. The adapter runs on B's
side: the Splice moves it (in place, dtype kept) to the device where B's stream enters layer M
(`B.device_of(M)`; B's embedding device for `inputs_embeds`), and A's layer-N states cross once per call,
to that device in the adapter's dtype (`stitch.models.placement.record_moves` shows every move); a write
that keeps B's own states brings B's stream and the position mask there too (`stitch.splice.combine`). A bf16
A spliced into an fp32 B with an fp32 adapter stays fp32 after A. `sp.to(device)` moves A, B and the
adapter (a sharded model is refused: it has no single device); `sp.to(dtype)` casts the adapter only.

Gradients: the models' `requires_grad` flags are never changed (building a Splice does put both models in
eval mode, dropout off, as `load_model` already leaves them). A runs under `no_grad`; B builds a graph only
through the injected stream, with its weights frozen for the duration of that call, so
`out.loss.backward()` reaches the adapter and nothing else. `sp(texts, batch_size=8)` runs the texts in
batches of 8 and returns one output (padded to the longest batch).
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from stitch.adapters import Identity
from stitch.adapters.conditioned import condition_features, is_conditioned
from stitch.alignment.pairing import Pairing, pair_texts
from stitch.batch import Batch
from stitch.checks import check_batch_size, check_choice, check_layer, check_texts
from stitch.models.hooked import HookedLM
from stitch.models.placement import adapter_dtype, adapter_on, move_model, transfer
from stitch.models.states import input_embeddings, is_embeddings
from stitch.splice import io
from stitch.splice.combine import Write, combine_for
from stitch.splice.generate import GenerationOutput, config_from, generate, resolve_eos
from stitch.splice.injection import injection_for
from stitch.splice.output import SpliceOutput, merge_outputs
from stitch.splice.positions import Mask, Positions


class Splice(nn.Module):
    """A frozen source model, a frozen target model, and the adapter between them (the only parameters)."""

    def __init__(
        self,
        A: HookedLM,
        B: HookedLM,
        source_layer: int,
        target_layer: int | None = None,
        adapter: nn.Module | None = None,
        alignment: str = "target",
        injection: str = "residual",
        padding_side: str = "right",
        positions=None,
        combine: str = "replace",
    ):
        super().__init__()
        for arg, model in (("A", A), ("B", B)):
            if not isinstance(model, HookedLM):
                raise TypeError(
                    f"{arg}: expected a stitch.HookedLM (use stitch.load_model), got {type(model).__name__}"
                )
        check_choice("alignment", alignment, ("target", "source"))
        self.strategy = injection_for(injection)
        check_choice("padding_side", padding_side, ("right", "left"))
        self._models = (A, B)  # a tuple, so neither model is registered: parameters() are the adapter's only
        self.source_layer = check_layer("source_layer", source_layer, A.n_layers)
        self.target_layer = self.strategy.target_layer(target_layer, source_layer, B.n_layers)
        self.alignment, self.injection, self.padding_side = alignment, injection, padding_side
        self.positions = Positions.parse(self.strategy.default_positions if positions is None else positions)
        self.combine = combine_for(combine)
        if alignment == "source" and (self.selective or self.strategy.reads_own_lower):
            raise ValueError(
                f"alignment: 'source' runs B on A's positions with placeholder ids, so B has no states of its "
                f"own there; injection={injection!r} with positions={self.positions.label!r} needs alignment='target'"
            )
        self.adapter = adapter_on(_checked_adapter(adapter, A.d_model, B.d_model), self.write_device)
        for model in (A, B):
            model.model.eval()  # dropout off; requires_grad flags are left as the caller set them

    @property
    def write_point(self):
        """The state of B the mapped states stand in for: layer M, or `EMBEDDINGS` for `inputs_embeds`."""
        return self.strategy.write_point(self.target_layer)

    @property
    def selective(self) -> bool:
        """Whether B's own states are kept anywhere (a position selection, or a combine other than replace)."""
        return not self.positions.every or self.combine.name != "replace"

    @property
    def blocks_run(self) -> dict[str, tuple[int, int]]:
        """The half-open ranges of blocks each model runs: A [0, N), B [first, L_B)."""
        first = self.strategy.first_block(self.target_layer, self.selective)
        return {"A": (0, self.source_layer), "B": (first, self.B.n_layers)}

    @property
    def answers(self) -> str:
        """The question this splice answers (the hybrid injection answers a different one from the splice)."""
        return self.strategy.answers

    @property
    def write_device(self) -> torch.device:
        """Where the adapter runs and A's states are moved: B's device at layer M (embeddings for inputs_embeds)."""
        point = self.write_point
        return self.B.device if is_embeddings(point) else self.B.device_of(point)

    @property
    def A(self) -> HookedLM:
        return self._models[0]

    @property
    def B(self) -> HookedLM:
        return self._models[1]

    def extra_repr(self) -> str:
        return (
            f"A={self.A.name!r}, B={self.B.name!r}, source_layer={self.source_layer}, "
            f"target_layer={self.target_layer}, alignment={self.alignment!r}, injection={self.injection!r}, "
            f"positions={self.positions.label!r}"
        )

    def forward(self, texts, batch_size: int | None = None) -> SpliceOutput:
        """B's logits under the splice on `texts`; with `batch_size`, run in batches and merged."""
        if batch_size is not None:
            texts = check_texts(texts)
            check_batch_size(batch_size)
            if len(texts) > batch_size:
                chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
                return merge_outputs([self.forward(chunk) for chunk in chunks], self.padding_side)
        aligned = self.align(texts)
        states = self.A.residuals(aligned.source, [self.source_layer])[self.source_layer]  # no_grad inside
        logits = self.spliced_logits(states, aligned)
        labels = self.labels(aligned).to(logits.device)  # B's output device, on a sharded B
        return SpliceOutput(logits, labels, aligned.source, aligned.target)

    def to(self, *args, **kwargs) -> Splice:
        """Move A, B and the adapter to a device (`sp.to("cuda:1")`); a dtype casts the adapter only.

        Models sharded with `device_map` have no single device and are refused; what moved is logged
        (logger "stitch.splice").
        """
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        moved = []
        if device is not None:
            models = [("A and B", self.A)] if self.A.model is self.B.model else [("A", self.A), ("B", self.B)]
            for arg, model in models:
                moved += move_model(arg, model, device)
        super().to(*args, **kwargs)
        _log.info("Splice.to: moved %s", ", ".join([*moved, f"adapter (dtype {dtype})" if dtype else "adapter"]))
        return self

    def cuda(self, device=None) -> Splice:
        return self.to(torch.device("cuda", device) if isinstance(device, int) else device or "cuda")

    def cpu(self) -> Splice:
        return self.to("cpu")

    def spliced_logits(
        self, states: Float[Tensor, "batch pos_s d_source"], aligned: Pairing
    ) -> Float[Tensor, "batch pos vocab"]:
        """B's logits from A's layer-N `states`: adapter, then the injection at the selected positions."""
        mapped = self.map_states(states, aligned)
        return self.target_logits(mapped, self.target_batch(aligned), self.selected(aligned))

    def target_logits(
        self, mapped: Float[Tensor, "batch pos d_target"], batch_b: Batch, selected: Mask | None = None
    ) -> Float[Tensor, "batch pos vocab"]:
        """B's logits reading `mapped` where the injection writes (layer M, or `inputs_embeds`), at the
        `selected` positions (None: every position); B's own states elsewhere."""
        return self.strategy.run(self.B, mapped, batch_b, self.target_layer, self.write(selected))

    def write(self, selected: Mask | None) -> Write:
        """What B's stream becomes at the write point: this splice's combine at `selected` (None: all)."""
        return Write(self.combine, selected)

    def selected(self, aligned: Pairing) -> Mask | None:
        """The positions of B's grid this splice writes to (None: all of them)."""
        return self.positions.mask(aligned)

    def labels(self, aligned: Pairing) -> Int[Tensor, "batch pos"]:
        """What the splice is scored on: B's own next tokens (target grid) or the source-grid labels."""
        return aligned.labels(self.alignment)

    def generate(
        self,
        prompts,
        max_new_tokens: int = 32,
        policy: str = "prompt",
        stop_at_eos: bool = True,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop_strings=None,
        eos_token_id=None,
        return_ids: bool = False,
        output_scores: bool = False,
        streamer=None,
        use_cache: bool = True,
        batch_size: int | None = None,
    ) -> list[str] | GenerationOutput:
        """B's continuations under the splice: texts, or a GenerationOutput with `return_ids`/`output_scores`.

        >>> sp.generate(["Hello"], max_new_tokens=8, policy="restitch", do_sample=True, top_p=0.9, seed=0)
        >>> sp.generate(prompts, max_new_tokens=32, batch_size=8)     # 8 prompts at a time, one list back

        Policies and controls: `stitch.splice.generate` and `stitch.splice.policies`. With `batch_size`,
        each batch is generated on its own (a sampling `seed` restarts per batch); per-step `scores` need
        all prompts in one batch.
        """
        config = config_from(
            max_new_tokens, policy, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
            seed=seed, stop_strings=stop_strings, use_cache=use_cache,
            eos_token_id=resolve_eos(self.B.tokenizer, eos_token_id, stop_at_eos),
        )
        out = self._generate_batched(prompts, config, batch_size, streamer, output_scores)
        return out if (return_ids or output_scores) else out.texts

    def _generate_batched(self, prompts, config, batch_size, streamer, output_scores) -> GenerationOutput:
        prompts = check_texts(prompts)
        if batch_size is None or len(prompts) <= check_batch_size(batch_size):
            return generate(self, prompts, config, streamer=streamer, output_scores=output_scores)
        if output_scores or streamer is not None:
            raise ValueError(
                f"batch_size: {batch_size} splits {len(prompts)} prompts into batches, but output_scores and "
                "streamer report per step over all prompts at once; drop batch_size or pass both alone"
            )
        outs = [generate(self, prompts[i : i + batch_size], config) for i in range(0, len(prompts), batch_size)]
        fields = ("texts", "token_ids", "prompt_ids", "stopped")
        return GenerationOutput(*([x for out in outs for x in getattr(out, f)] for f in fields))

    def save_pretrained(self, directory) -> None:
        """Save the whole splice (adapter, layers, alignment, injection, models' identities) to `directory`."""
        io.save_splice(self, directory)

    @classmethod
    def from_pretrained(cls, source, A: HookedLM | None = None, B: HookedLM | None = None, **kwargs) -> Splice:
        """`Splice.from_pretrained("runs/l16")`: a saved splice (a directory or hub repo id); models not
        given are reloaded from their saved identities, given ones must match them (`stitch.splice.io`).
        Keyword arguments: `dtype`, `device` (for reloaded models), `revision` (of a hub repo)."""
        A, B, saved = io.read_splice(source, A, B, **kwargs)
        return cls(A, B, **saved)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Upload the saved splice as hub repo `repo_id` (needs huggingface_hub); see `stitch.splice.io`."""
        return io.push_splice(self, repo_id, **kwargs)

    def align(self, texts) -> Pairing:
        """Encode texts for A and B and pair the two tokenizations (identity when the tokenizer is shared)."""
        return pair_texts(self.A, self.B, texts, self.padding_side)

    def map_states(
        self, states: Float[Tensor, "batch pos_s d_source"], aligned: Pairing
    ) -> Float[Tensor, "batch pos d_target"]:
        """Adapter output on B's grid: target grid gathers A's aligned states; unaligned positions get adapter(0).

        A token-conditioned adapter maps each gathered state with B's conditioning vector at that position
        (zero at shared positions: on the source grid and for one shared tokenization it is never needed).
        """
        # The one move of A's states: to B's side, in the adapter's dtype (the adapter runs there).
        states = transfer(states, self.write_device, adapter_dtype(self.adapter, states))
        if self.alignment == "source" or aligned.target_to_source is None:
            return self._adapt(states)
        # A zero state in front stands for "no A token has finished yet" (index -1 → row 0).
        index = (aligned.target_to_source.to(states.device) + 1).unsqueeze(-1)
        if is_conditioned(self.adapter):
            gathered = F.pad(states, (0, 0, 1, 0)).gather(1, index.expand(-1, -1, states.shape[-1]))
            return self._adapt(gathered, self.condition(aligned))
        mapped = self._adapt(F.pad(states, (0, 0, 1, 0)))
        return mapped.gather(1, index.expand(-1, -1, mapped.shape[-1]))

    def condition(self, aligned: Pairing) -> Float[Tensor, "batch pos_t d_condition"]:
        """B's conditioning vectors: its input embeddings of the B tokens read since the last shared boundary."""
        window = getattr(self.adapter, "module", self.adapter).window
        embeds = input_embeddings(self.B, aligned.target)
        return condition_features(embeds, aligned.since_boundary(window))

    def target_batch(self, aligned: Pairing) -> Batch:
        """What B runs on: its own tokens (target grid) or A's positions with placeholder ids (source grid)."""
        if self.alignment == "target":
            return aligned.target
        src = aligned.source
        placeholders = torch.full_like(src.input_ids, self.B.pad_token_id)
        return dataclasses.replace(
            src, input_ids=placeholders, tokenizer_fingerprint=self.B.tokenizer_fingerprint
        )

    def adapt(self, states: Float[Tensor, "... d_source"], condition: Tensor | None = None) -> Float[Tensor, "... d_target"]:
        """The adapter applied to A's states (moved to B's side first; checked: device, output width), with
        B's conditioning vectors for a token-conditioned adapter."""
        return self._adapt(transfer(states, self.write_device, adapter_dtype(self.adapter, states)), condition)

    def _adapt(self, states: Tensor, condition: Tensor | None = None) -> Tensor:
        param = next(self.adapter.parameters(), None)
        if param is not None and param.device != states.device:
            raise ValueError(
                f"adapter: on device {param.device} but B's layer {self.write_point} is on {states.device}, "
                f"where the adapter runs; use adapter.to({str(states.device)!r}) or sp.to(...)"
            )
        dtype = adapter_dtype(self.adapter, states)
        inputs = (states.to(dtype),) if condition is None else (states.to(dtype), transfer(condition, states.device, dtype))
        mapped = self.adapter(*inputs)
        if not isinstance(mapped, Tensor) or not mapped.is_floating_point():
            got = f"a {mapped.dtype} tensor" if isinstance(mapped, Tensor) else type(mapped).__name__
            raise TypeError(f"adapter: returned {got}; an adapter must return floating-point states for B")
        if mapped.shape[-1] != self.B.d_model:
            raise ValueError(f"adapter: output width {mapped.shape[-1]} but B's d_model is {self.B.d_model}")
        return mapped


_log = logging.getLogger("stitch.splice")


def _checked_adapter(adapter: nn.Module | None, d_source: int, d_target: int) -> nn.Module:
    """The adapter, or Identity when widths match; a clear error for widths that cannot fit."""
    if adapter is None:
        if d_source != d_target:
            raise ValueError(
                f"adapter: None needs equal widths, but d_source={d_source} (A) and d_target={d_target} "
                f"(B); pass an adapter mapping {d_source} → {d_target}, e.g. "
                f"stitch.adapters.Projection({d_source}, {d_target})"
            )
        return Identity(d_source)
    if not isinstance(adapter, nn.Module):
        raise TypeError(
            f"adapter: expected an nn.Module mapping [..., {d_source}] → [..., {d_target}], "
            f"got {type(adapter).__name__}"
        )
    widths = _declared_widths(adapter)
    if widths is not None and widths != (d_source, d_target) and None not in widths:
        raise ValueError(
            f"adapter: maps {widths[0]} → {widths[1]}, but the splice needs d_source={d_source} "
            f"(A's d_model) → d_target={d_target} (B's d_model)"
        )
    return adapter


def _declared_widths(adapter: nn.Module) -> tuple[int | None, int | None] | None:
    if hasattr(adapter, "d_source"):
        return adapter.d_source, adapter.d_target
    if isinstance(adapter, nn.Linear):
        return adapter.in_features, adapter.out_features
    return None
