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

from stitch.adapters.conditioned import is_conditioned
from stitch.alignment.pairing import Pairing
from stitch.batch import Batch
from stitch.checks import check_choice
from stitch.models.kv import KVCache
from stitch.splice.combine import EVERYWHERE, Write
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

    def prompt_write(self) -> tuple[Tensor, Write]:
        """The mapped states on B's prompt grid and the `Write` that puts them there (the splice's)."""
        states = self.A.residuals(self.pairing.source, [self.splice.source_layer])[self.splice.source_layer]
        return self.splice.map_states(states, self.pairing), self.splice.write(self.splice.selected(self.pairing))

    def start(self) -> Tensor:
        self.kv = KVCache.empty(self.B, len(self.rows))
        mapped, write = self.prompt_write()
        step = self.rows.prompt_step(self.rows.target)
        strategy, m = self.splice.strategy, self.splice.target_layer
        return strategy.run_cached(self.B, mapped, self.kv, step, m, write, below=True)

    def advance(self) -> Tensor:
        return self.B.forward_cached(self.kv, self.rows.last_token_step())

    def reference(self) -> Tensor:
        batch = left_batch(self.B, self.rows.b_ids())
        mapped, write = self.prompt_write()
        strategy, m = self.splice.strategy, self.splice.target_layer
        full, full_write = on_full_grid(batch, self.rows.target, mapped, write)
        return strategy.run(self.B, full, batch, m, full_write)[:, -1]


def on_full_grid(batch: Batch, prompt: Batch, mapped: Tensor, write: Write) -> tuple[Tensor, Write]:
    """(mapped, write) for a from-scratch forward of `batch`: the prompt's write at its columns, B's own
    stream at every generated position."""
    rows, cols, prompt_cols = prompt_columns(batch, prompt)
    full = mapped.new_zeros(*batch.shape, mapped.shape[-1])
    full[rows, cols] = mapped[rows, prompt_cols]
    selected = torch.zeros(batch.shape, dtype=torch.bool, device=mapped.device)
    selected[rows, cols] = True if write.selected is None else write.selected[rows, prompt_cols]
    return full, Write(write.combine, selected)


class Restitch(Policy):
    name = "restitch"
    aliases = ("all",)

    def __init__(self, splice, rows):
        super().__init__(splice, rows)
        self.source = SourceTokens.for_splice(splice, rows)
        # Selections, combines reading B's own stream and conditioned adapters make what a B position is
        # fed depend on the whole text so far: those are recomputed on B's grid each step (`_advance_grid`).
        self.on_grid = splice.selective or splice.strategy.reads_own_lower or is_conditioned(splice.adapter)

    def start(self) -> Tensor:
        self.kv_a = KVCache.empty(self.A, len(self.rows))
        self.kv_b = KVCache.empty(self.B, len(self.rows))
        self.fed: list = [[] for _ in range(len(self.rows))]  # what each B position was fed
        return self.advance()

    def advance(self) -> Tensor:
        changed = self.source.update(self.kv_a)  # A's first re-tokenized index per row
        dirty, mapped, write, step = self._advance_grid() if self.on_grid else self._advance_index(changed)
        strategy, m = self.splice.strategy, self.splice.target_layer
        below = self.splice.selective or strategy.reads_own_lower
        return strategy.run_cached(self.B, mapped, self.kv_b, step, m, write, below=below)

    def _advance_index(self, changed: list[int]):
        """The fast path: a B position's mapped state is A's at the index feeding it, written everywhere."""
        feeding = self.source.feeding()
        dirty = []
        for r, (fed, now) in enumerate(zip(self.fed, feeding, strict=True)):
            stale = [j for j, t in enumerate(now) if j >= len(fed) or fed[j] != t or t >= changed[r]]
            dirty.append(stale[0] if stale and self.rows.alive[r] else len(now))
            self.fed[r] = list(now)
        self.kv_b.forget(torch.tensor(dirty, device=self.B.device))
        step, index = self.rows.tail_step(dirty)
        return dirty, self.source.mapped_block(index, feeding), EVERYWHERE, step

    def _advance_grid(self):
        """Every B position's (mapped state, selected) from the pairing of the text so far; a row restarts at
        its first position whose input changed (e.g. the previous last token, under positions="last")."""
        batch = left_batch(self.B, self.rows.b_ids())
        pairing = self.source.pairing(batch)
        mapped = self.splice.map_states(self.source.cached_states(pairing.source), pairing)
        selected = self.splice.selected(pairing)
        chosen = batch.attention_mask.bool() if selected is None else selected
        dirty = []
        for r, row in enumerate(self.rows.rows):
            n = len(row.ids)
            now = (mapped[r, -n:], chosen[r, -n:])
            dirty.append(_first_change(self.fed[r], now) if self.rows.alive[r] else n)
            self.fed[r] = now
        self.kv_b.forget(torch.tensor(dirty, device=self.B.device))
        step, index = self.rows.tail_step(dirty)
        out = mapped.new_zeros(len(self.rows), step.shape[1], mapped.shape[-1])
        sel = torch.zeros(step.shape, dtype=torch.bool, device=mapped.device)
        for r, cols in enumerate(index):
            n = len(self.rows[r].ids)
            for c, j in cols:
                out[r, c], sel[r, c] = mapped[r, batch.shape[1] - n + j], chosen[r, batch.shape[1] - n + j]
        return dirty, out, Write(self.splice.combine, None if selected is None else sel), step

    def reference(self) -> Tensor:
        batch = left_batch(self.B, self.rows.b_ids())
        pairing, states = self.source.from_scratch(batch)
        mapped = self.splice.map_states(states, pairing)
        write = self.splice.write(self.splice.selected(pairing))
        return self.splice.strategy.run(self.B, mapped, pairing.target, self.splice.target_layer, write)[:, -1]


def _first_change(old, now) -> int:
    """The first B position whose (mapped, selected) input differs from what it was fed (len(old) if none)."""
    if not old:
        return 0
    k = len(old[1])
    (m_old, s_old), (m_new, s_new) = old, (now[0][:k], now[1][:k])
    differs = (s_old != s_new) | (s_new & (m_old != m_new).any(-1))
    return int(differs.nonzero()[0, 0]) if differs.any() else k


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
