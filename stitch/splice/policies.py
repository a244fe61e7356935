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
  Per step the work is what changed: A runs on its re-tokenized tail and new tokens, only the B positions
  those can move are re-aligned (`stitch.splice.feeding`), and B recomputes from its first position whose
  input changed.

A new policy is one subclass of `Policy` plus `register_policy`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from stitch.adapters.conditioned import condition_features, is_conditioned
from stitch.alignment.pairing import Pairing
from stitch.batch import Batch
from stitch.models.kv import KVCache
from stitch.registry import Registry
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
        # fed depend on more than its feeding A token: `_advance_grid` reads them each step from the kept
        # tokens (selection, classes) and maps only the positions B recomputes.
        self.on_grid = splice.selective or splice.strategy.reads_own_lower or is_conditioned(splice.adapter)
        self.window = getattr(splice.adapter, "module", splice.adapter).window if is_conditioned(splice.adapter) else 0

    def start(self) -> Tensor:
        self.kv_a = KVCache.empty(self.A, len(self.rows))
        self.kv_b = KVCache.empty(self.B, len(self.rows))
        self.fed = [FedRow() for _ in range(len(self.rows))]  # what each B position was fed
        return self.advance()

    def advance(self) -> Tensor:
        first = self.source.update(self.kv_a)  # per row, A's first token whose state was recomputed
        frontier = self.source.update_feed(first)  # per row, the first B position whose feeding may differ
        dirty, mapped, write, step = (self._advance_grid if self.on_grid else self._advance_index)(first, frontier)
        strategy, m = self.splice.strategy, self.splice.target_layer
        below = self.splice.selective or strategy.reads_own_lower
        return strategy.run_cached(self.B, mapped, self.kv_b, step, m, write, below=below)

    def _advance_index(self, first: list[int], frontier: list[int]):
        """The fast path: a B position's mapped state is A's at the index feeding it, written everywhere."""
        dirty, before = [], [len(fed.feed) for fed in self.fed]
        for r, fed in enumerate(self.fed):
            feed = self.source.feed[r]
            dirty.append(fed.first_stale(feed, frontier[r], first[r]) if self.rows.alive[r] else len(feed))
            fed.keep(feed, frontier[r])
        self._forget(dirty, before)
        step, index = self.rows.tail_step(dirty)
        return dirty, self.source.mapped_block(index), EVERYWHERE, step

    def _advance_grid(self, first: list[int], frontier: list[int]):
        """Selections, combines and conditioning: each row restarts at its first B position whose (feeding A
        token, selected, conditioning tokens) changed or whose A state was recomputed (e.g. the previous last
        token, under positions="last"). The selection is read on the integer grid of the text so far (no
        re-encoding, no re-alignment); the adapter maps only the positions B recomputes."""
        pairing = self.source.grid_pairing()
        selected = self.splice.selected(pairing)
        chosen = pairing.target.attention_mask.bool() if selected is None else selected
        since = pairing.since_boundary(self.window) if self.window else None
        width, dirty, before = chosen.shape[1], [], [len(fed.feed) for fed in self.fed]
        for r, fed in enumerate(self.fed):
            feed, n = self.source.feed[r], len(self.source.feed[r])
            sel, back = chosen[r, width - n :], None
            if since is not None:  # row-relative B positions (-1: none)
                back = torch.where(since[r, width - n :] >= 0, since[r, width - n :] - (width - n), -1)
            dirty.append(fed.first_change(feed, sel, back, frontier[r], first[r]) if self.rows.alive[r] else n)
            fed.keep(feed, frontier[r], sel, back)
        self._forget(dirty, before)
        step, index = self.rows.tail_step(dirty)
        out = self.source.zero.new_zeros(len(self.rows), step.shape[1], self.source.zero.shape[-1])
        sel = torch.zeros(step.shape, dtype=torch.bool, device=out.device)
        for r, cols in enumerate(index):
            if cols:
                positions, lo = [j for _, j in cols], cols[0][0]
                out[r, lo:] = self._mapped(r, positions, pairing, width)
                sel[r, lo:] = self.fed[r].sel[positions[0] :]
        return dirty, out, Write(self.splice.combine, None if selected is None else sel), step

    def _forget(self, dirty: list[int], before: list[int]) -> None:
        """Stop B attending to its slots from `dirty[r]` on; skipped when every row only adds positions."""
        if any(d < n for d, n in zip(dirty, before, strict=True)):
            self.kv_b.forget(torch.tensor(dirty, device=self.rows.device))

    def _mapped(self, r: int, positions: list[int], pairing: Pairing, width: int) -> Tensor:
        """Row r's mapped states at B `positions` (the adapter runs on these only)."""
        if not self.window:
            return self.source.mapped_states(r, positions)
        back = self.fed[r].back[positions[0] :]  # [k, window] B positions read since the boundary (-1: none)
        ids = pairing.target.input_ids[r, width - len(self.source.feed[r]) + back.clamp(min=0)]
        embeds = self.B.model.get_input_embeddings()(ids.flatten())[None]
        index = torch.where(back >= 0, torch.arange(back.numel(), device=back.device).view(back.shape), -1)
        return self.splice.adapt(self.source.raw_states(r, positions), condition_features(embeds, index[None])[0])

    def reference(self) -> Tensor:
        batch = left_batch(self.B, self.rows.b_ids())
        pairing, states = self.source.from_scratch(batch)
        mapped = self.splice.map_states(states, pairing)
        write = self.splice.write(self.splice.selected(pairing))
        return self.splice.strategy.run(self.B, mapped, pairing.target, self.splice.target_layer, write)[:, -1]


class FedRow:
    """What one row's B positions were fed last step: feeding A token, selected, conditioning positions."""

    def __init__(self):
        self.feed: list[int] = []
        self.sel: Tensor | None = None
        self.back: Tensor | None = None

    def first_stale(self, feed: list[int], frontier: int, first_a: int) -> int:
        """The first B position fed another A token, or one whose A state was recomputed (from `frontier` on:
        earlier positions keep their feeding, all of it before `first_a`)."""
        old = self.feed
        for j in range(frontier, len(feed)):
            if j >= len(old) or old[j] != feed[j] or feed[j] >= first_a:
                return j
        return len(feed)

    def first_change(self, feed, sel: Tensor, back: Tensor | None, frontier: int, first_a: int) -> int:
        """`first_stale` for a selective write: a position counts only while it is (or was) selected, and a
        conditioned one also when the B tokens it reads since the last shared boundary changed."""
        n_old = len(self.feed)
        if n_old == 0:
            return 0
        moved = (self.sel != sel[:n_old]).nonzero()  # a selection can move anywhere (e.g. "last")
        lo = min(frontier, int(moved[0, 0]) if len(moved) else n_old)
        sel_now, sel_old = sel[lo:].tolist(), self.sel[lo:].tolist()
        same_back = [True] * (n_old - lo) if back is None else (back[lo:n_old] == self.back[lo:]).all(-1).tolist()
        for k, j in enumerate(range(lo, len(feed))):
            if j >= n_old or sel_old[k] != sel_now[k]:
                return j
            if sel_now[k] and (self.feed[j] != feed[j] or feed[j] >= first_a or not same_back[k]):
                return j
        return len(feed)

    def keep(self, feed: list[int], frontier: int, sel: Tensor | None = None, back: Tensor | None = None) -> None:
        self.feed[frontier:] = feed[frontier:]
        self.sel, self.back = sel, back


POLICIES: Registry[type[Policy]] = Registry("policy")


def register_policy(policy: type[Policy]) -> type[Policy]:
    """Class decorator: make `policy` selectable by its `name` and by each of its `aliases`."""
    return POLICIES.register(policy, *policy.aliases)


for _policy in (Prompt, Restitch):
    register_policy(_policy)


def policy_for(name: str) -> type[Policy]:
    """The policy registered as `name` (or an alias of it); an unknown name lists the valid ones."""
    return POLICIES.lookup(name)
