"""Generation policies: which of B's positions read A's states, each cached and from scratch (the reference).

    >>> policy = policy_for("restitch")(splice, rows)
    >>> logits = policy.start()                 # [batch, vocab]: B's next-token logits after the prompt
    >>> logits = policy.advance()               # after `rows` took one more token each (cached)
    >>> logits = policy.reference()             # the same, recomputed from scratch by re-encoding

What each position's every layer attends to (layer M: the injection's write point; M = 0 for inputs_embeds):
- "prompt": prompt positions carry A's mapped states from layer M up; below M they hold B's own reading of
  the prompt. Generated tokens are B's own at every layer: below M they attend to B's own prompt states,
  from M up to the spliced prompt states. Like an nnsight-style edit of the prompt positions at layer M.
- "restitch" (alias "all"): every position, generated ones too, carries A's state from layer M up, and B's
  blocks below M never run. A reads the text B generated (its own tokens of it, or B's ids when the two
  share a tokenizer), incrementally cached in both models. At every step B's logits equal a splice forward
  on the text so far: when A re-tokenizes its tail (`stitch.splice.tokens`), the B positions whose A state
  changed are recomputed. The clean test of whether B's continuation can be driven by A.

A new policy is one subclass of `Policy` plus `register_policy`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from stitch.alignment.pairing import Pairing
from stitch.checks import check_choice
from stitch.models.kv import KVCache
from stitch.splice.rows import Rows, SourceTokens, left_batch, prompt_columns


class Policy:
    """One generation policy over a batch of `Rows`; subclasses implement the three methods."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()

    def __init__(self, splice, rows: Rows):
        self.splice, self.rows = splice, rows
        self.A, self.B = splice.A, splice.B

    def start(self) -> Tensor:
        raise NotImplementedError

    def advance(self) -> Tensor:
        raise NotImplementedError

    def reference(self) -> Tensor:
        raise NotImplementedError


class Prompt(Policy):
    name = "prompt"

    def __init__(self, splice, rows):
        super().__init__(splice, rows)
        self.pairing: Pairing = rows.prompt_pairing(self.A)

    def _prompt_mapped(self) -> Tensor:
        source = self.pairing.source
        states = self.A.residuals(source, [self.splice.source_layer])[self.splice.source_layer]
        return self.splice.map_states(states, self.pairing)

    def start(self) -> Tensor:
        self.kv = KVCache.empty(self.B, len(self.rows))
        step = self.rows.prompt_step(self.pairing.target)
        strategy, m = self.splice.strategy, self.splice.target_layer
        return strategy.run_cached(self.B, self._prompt_mapped(), self.kv, step, m, below=True)

    def advance(self) -> Tensor:
        return self.B.forward_cached(self.kv, self.rows.last_token_step())

    def reference(self) -> Tensor:
        batch = left_batch(self.B, self.rows.b_ids())
        strategy, m = self.splice.strategy, self.splice.target_layer
        own = strategy.own_states(self.B, batch, m)
        mapped = self._prompt_mapped().to(own.dtype)
        rows, cols, prompt_cols = prompt_columns(batch, self.pairing.target)
        mixed = own.clone()
        mixed[rows, cols] = strategy.write(own[rows, cols], mapped[rows, prompt_cols])
        return strategy.run(self.B, mixed, batch, m)[:, -1]


class Restitch(Policy):
    name = "restitch"
    aliases = ("all",)

    def __init__(self, splice, rows):
        super().__init__(splice, rows)
        self.source = SourceTokens.for_splice(splice, rows)

    def start(self) -> Tensor:
        self.kv_a = KVCache.empty(self.A, len(self.rows))
        self.kv_b = KVCache.empty(self.B, len(self.rows))
        self.fed: list[list[int]] = [[] for _ in range(len(self.rows))]  # A index each B position was fed
        return self.advance()

    def advance(self) -> Tensor:
        changed = self.source.update(self.kv_a)  # A's first re-tokenized index per row
        feeding = self.source.feeding()
        dirty = []
        for r, (fed, now) in enumerate(zip(self.fed, feeding, strict=True)):
            stale = [j for j, t in enumerate(now) if j >= len(fed) or fed[j] != t or t >= changed[r]]
            first = stale[0] if stale and self.rows.alive[r] else len(now)
            dirty.append(first)
            self.fed[r] = list(now)
        self.kv_b.forget(torch.tensor(dirty, device=self.B.device))
        step, index = self.rows.tail_step(dirty)
        mapped = self.source.mapped_block(index, feeding)
        strategy, m = self.splice.strategy, self.splice.target_layer
        return strategy.run_cached(self.B, mapped, self.kv_b, step, m, below=strategy.reads_own_stream)

    def reference(self) -> Tensor:
        batch = left_batch(self.B, self.rows.b_ids())
        pairing, states = self.source.from_scratch(batch)
        mapped = self.splice.map_states(states, pairing)
        strategy = self.splice.strategy
        if strategy.reads_own_stream:
            mapped = strategy.write(strategy.own_states(self.B, batch, self.splice.target_layer), mapped)
        return strategy.run(self.B, mapped, batch, self.splice.target_layer)[:, -1]


POLICIES: dict[str, type[Policy]] = {}


def register_policy(policy: type[Policy]) -> type[Policy]:
    for name in (policy.name, *policy.aliases):
        POLICIES[name] = policy
    return policy


for _policy in (Prompt, Restitch):
    register_policy(_policy)


def policy_for(name: str) -> type[Policy]:
    """The policy registered as `name` (or an alias of it); an unknown name lists the valid ones."""
    check_choice("policy", name, tuple(POLICIES))
    return POLICIES[name]
