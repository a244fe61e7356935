"""The batch of prompts being generated: B's rows of ids, A's tokens of the same text, and the steps that feed them.

    >>> rows = Rows.start(B, prompts)               # B's prompt tokens, left-padded, aligned once
    >>> rows.append([17, 4])                          # one new B token per live row
    >>> step, index = rows.tail_step(first)          # B positions first[r].. of every row, as one cached step
    >>> source = SourceTokens.for_splice(splice, rows)   # A's tokens: B's own ids, or A's re-tokenization

Steps are right-aligned: a row that adds fewer tokens than another pads on the left of the step, so the last
column always holds every live row's newest token (the one whose logits are read).
"""

from __future__ import annotations

import dataclasses

import torch
from jaxtyping import Int
from torch import Tensor

from stitch.alignment.align import align_spans
from stitch.alignment.pairing import Pairing, pair_batches
from stitch.batch import Batch, positions_from_mask
from stitch.models.hooks import boundary_name
from stitch.models.kv import KVCache, Step
from stitch.splice.feeding import Growing, update_feeding
from stitch.splice.tokens import TailTokenizer, TextRow


class Rows:
    """One `TextRow` per prompt, which of them still generate, and B's prompt encoding."""

    def __init__(self, B, prompts: list[str], target: Batch):
        self.B, self.prompts, self.target = B, prompts, target
        mask = target.attention_mask.bool()
        ends = (target.byte_spans if target.byte_spans is not None else target.spans)[..., 1]
        self.rows = [
            TextRow.start(B.tokenizer, p, target.input_ids[r][mask[r]].tolist(), ends[r][mask[r]].tolist(),
                          target.special_mask[r][mask[r]].tolist())
            for r, p in enumerate(prompts)
        ]
        self.alive = [True] * len(prompts)
        self.device, self.pad = B.device, B.pad_token_id  # read once: each is a lookup, asked every step

    @classmethod
    def start(cls, B, prompts: list[str]) -> Rows:
        return cls(B, prompts, B.encode(prompts, padding_side="left"))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, r: int) -> TextRow:
        return self.rows[r]

    def append(self, tokens: list[int | None]) -> None:
        for row, alive, token in zip(self.rows, self.alive, tokens, strict=True):
            if alive:
                row.append(token)

    def b_ids(self) -> list[list[int]]:
        return [row.ids for row in self.rows]

    def prompt_pairing(self, A) -> Pairing:
        """A's and B's prompt tokens paired (identity when the tokenizer is shared): aligned once."""
        if A.tokenizer is self.B.tokenizer:
            return Pairing(self.target, self.target, None)
        return pair_batches(A.encode(self.prompts, padding_side="left"), self.target)

    def prompt_step(self, target: Batch) -> Step:
        return Step(target.input_ids, target.position_ids, target.attention_mask.bool())

    def last_token_step(self) -> Step:
        """Every live row's newest B token as a one-column step."""
        ids = [[row.ids[-1]] for row in self.rows]
        positions = [[len(row.ids) - 1] for row in self.rows]
        return _step(ids, positions, [[a] for a in self.alive], self.device)

    def tail_step(self, first: list[int]) -> tuple[Step, list[list[tuple[int, int]]]]:
        """B positions `first[r]`.. of each row as one right-aligned step; per row, its (column, position)s."""
        spans = [range(f, len(row.ids)) for f, row in zip(first, self.rows, strict=True)]
        return block_step([[row.ids[j] for j in s] for s, row in zip(spans, self.rows, strict=True)],
                          [list(s) for s in spans], self.pad, self.device)


def block_step(ids: list[list[int]], positions: list[list[int]], pad: int, device) -> tuple[Step, list]:
    """Right-aligned step of per-row token lists; per row, the (column, position) of each of its tokens."""
    width = max(1, max(len(p) for p in positions))
    out_ids = [[pad] * (width - len(t)) + t for t in ids]
    out_pos = [[0] * (width - len(p)) + p for p in positions]
    valid = [[False] * (width - len(p)) + [True] * len(p) for p in positions]
    index = [list(zip(range(width - len(p), width), p, strict=True)) for p in positions]
    return _step(out_ids, out_pos, valid, device), index


def _step(ids, positions, valid, device) -> Step:
    return Step(
        torch.tensor(ids, dtype=torch.long, device=device),
        torch.tensor(positions, dtype=torch.long, device=device),
        torch.tensor(valid, dtype=torch.bool, device=device),
    )


def left_batch(model, ids: list[list[int]], texts: list[str] | None = None) -> Batch:
    """A left-padded Batch of token-id rows (no spans: only for forwards)."""
    width = max(len(r) for r in ids)
    padded = torch.tensor([[model.pad_token_id] * (width - len(r)) + r for r in ids], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids], dtype=torch.long)
    spans = torch.full((*padded.shape, 2), -1, dtype=torch.long)
    batch = Batch(texts or [""] * len(ids), padded, mask, positions_from_mask(mask), spans,
                  torch.zeros(padded.shape, dtype=torch.bool), "left")
    return batch.to(model.device)


def prompt_columns(full: Batch, prompt: Batch) -> tuple[Tensor, Tensor, Tensor]:
    """(row, column in `full`, column in `prompt`) of every prompt token; both batches left-padded."""
    n_full, n_prompt = full.attention_mask.sum(-1).tolist(), prompt.attention_mask.sum(-1).tolist()
    rows, cols, pcols = [], [], []
    for r, (lf, lp) in enumerate(zip(n_full, n_prompt, strict=True)):
        start = full.shape[1] - lf
        rows += [r] * lp
        cols += range(start, start + lp)
        pcols += range(prompt.shape[1] - lp, prompt.shape[1])
    return tuple(torch.tensor(x, dtype=torch.long, device=full.device) for x in (rows, cols, pcols))


class SourceTokens:
    """A's tokens of the rows' text, A's mapped states for them (cached), and which feeds each B position."""

    def __init__(self, splice, rows: Rows):
        self.splice, self.rows, self.A = splice, rows, splice.A
        self.layer = splice.source_layer
        self.zero = splice.adapt(torch.zeros(1, self.A.d_model, device=self.A.device, dtype=self.A.dtype))
        # Per row: A's layer-N states and their mapped images, one per A token, kept in growing buffers.
        self.mapped = [Growing(self.zero.shape[-1], self.zero.device, self.zero.dtype) for _ in range(len(rows))]
        self.raw = [Growing(self.A.d_model, self.A.device, self.A.dtype) for _ in range(len(rows))]
        self.feed: list[list[int]] = [[] for _ in range(len(rows))]  # per row: B position -> A token (-1)
        self.device, self.pad = self.A.device, self.A.pad_token_id

    @staticmethod
    def for_splice(splice, rows: Rows) -> SourceTokens:
        shared = splice.A.tokenizer is splice.B.tokenizer
        return (SharedTokens if shared else Retokenized)(splice, rows)

    def run(self, kv: KVCache, ids: list[list[int]], first: list[int]) -> None:
        """A's blocks [0, N) on tokens first[r].. of each row (ids[r]); their mapped states replace the old."""
        if any(f < len(raw) for f, raw in zip(first, self.raw, strict=True)):  # else nothing is stale
            kv.forget(torch.tensor(first, device=self.device))
        new = [t[f:] for t, f in zip(ids, first, strict=True)]
        step, index = block_step(new, [list(range(f, f + len(t))) for f, t in zip(first, new, strict=True)],
                                 self.pad, self.device)
        captured = {}
        point = self.A.hook_points[boundary_name(self.layer, self.A.n_layers)]
        self.A.forward_cached(kv, step, stop=self.layer, hooks=[(point, lambda s, _: captured.setdefault(0, s))])
        mapped = self.splice.adapt(captured[0])
        for r, cols in enumerate(index):
            lo = cols[0][0] if cols else mapped.shape[1]  # a row's tokens fill the step's last columns
            self.mapped[r].write(first[r], mapped[r, lo:])
            self.raw[r].write(first[r], captured[0][r, lo:])

    def mapped_block(self, index: list) -> Tensor:
        """The mapped state each (column, B position) of a step reads (`mapped_states`), right-aligned."""
        width = max((c for cols in index for c, _ in cols), default=0) + 1
        out = self.zero.new_zeros(len(index), width, self.zero.shape[-1])
        for r, cols in enumerate(index):
            if cols:
                out[r, cols[0][0] :] = self.mapped_states(r, [j for _, j in cols]).to(out.dtype)
        return out

    def mapped_states(self, r: int, positions: list[int]) -> Tensor:
        """Row r's mapped states at B `positions`: A's at `feed[r][j]`, the adapter's image of 0 where -1."""
        src = torch.tensor([self.feed[r][j] for j in positions], device=self.zero.device)
        return torch.where((src >= 0)[:, None], self.mapped[r].buffer[src.clamp(min=0)], self.zero)

    def raw_states(self, r: int, positions: list[int]) -> Tensor:
        """A's layer-N states feeding row r's B `positions` (zero where no A token feeds one)."""
        src = torch.tensor([self.feed[r][j] for j in positions], device=self.device)
        table = self.raw[r].buffer
        return torch.where((src >= 0)[:, None], table[src.clamp(min=0)], 0.0)

    def pairing(self, batch_b: Batch) -> Pairing:
        """A's tokens of the text so far paired to B's rows `batch_b` (left-padded); A does not run."""
        raise NotImplementedError

    def from_scratch(self, batch_b: Batch) -> tuple[Pairing, Tensor]:
        """The reference: A's tokens re-encoded, its states from its plain forward, the pairing to B's rows."""
        pairing = self.pairing(batch_b)
        return pairing, self.A.residuals(pairing.source, [self.layer])[self.layer]


class SharedTokens(SourceTokens):
    """A reads B's own ids (one tokenizer): the identity pairing, as `pair_texts` uses."""

    def update(self, kv: KVCache) -> list[int]:
        first = [len(m) if alive else len(row.ids) for m, alive, row in
                 zip(self.mapped, self.rows.alive, self.rows.rows, strict=True)]
        ids = [row.ids for row in self.rows.rows]
        if any(f < len(t) for f, t in zip(first, ids, strict=True)):
            self.run(kv, ids, first)
        return first

    def update_feed(self, first: list[int]) -> list[int]:
        """Extend each row's feeding (the identity) to its new B positions; the first new one per row."""
        frontier = []
        for feed, row in zip(self.feed, self.rows.rows, strict=True):
            frontier.append(len(feed))
            feed.extend(range(len(feed), len(row.ids)))
        return frontier

    def pairing(self, batch_b):
        return Pairing(batch_b, batch_b, None)

    def grid_pairing(self) -> Pairing:
        return self.pairing(left_batch(self.rows.B, self.rows.b_ids()))


class Retokenized(SourceTokens):
    """A re-tokenizes the text B generated, only its tail each step (the rule in `stitch.splice.tokens`)."""

    def __init__(self, splice, rows):
        super().__init__(splice, rows)
        self.tails = [TailTokenizer(self.A.tokenizer, row.text) for row in rows.rows]
        self.n_run = [0] * len(rows)

    def update(self, kv: KVCache) -> list[int]:
        first = []
        for r, (tail, row) in enumerate(zip(self.tails, self.rows.rows, strict=True)):
            changed = tail.extend(row.text) if self.rows.alive[r] else len(tail.ids)
            first.append(min(changed, self.n_run[r]))
            self._check_length(r, len(tail.ids))
        ids = [tail.ids for tail in self.tails]
        if any(f < len(t) for f, t in zip(first, ids, strict=True)):
            self.run(kv, ids, first)
        self.n_run = [len(t) for t in ids]
        return first

    def _check_length(self, r: int, n: int) -> None:
        if self.A.n_ctx is not None and n > self.A.n_ctx:
            raise ValueError(
                f"max_new_tokens: prompt {r}'s text has grown to {n} tokens of A, beyond A's {self.A.n_ctx} "
                f"positions; generate fewer tokens"
            )

    def update_feed(self, first: list[int]) -> list[int]:
        """Re-align each row's B positions that A's re-tokenization from `first[r]` can have moved; per row,
        the first B position recomputed (the rule in `stitch.splice.feeding`)."""
        rows = self.rows.rows
        return [
            update_feeding(feed, tail.ends, tail.special, row.ends, row.special, f, self.device)
            if alive else len(feed)
            for feed, tail, row, f, alive in zip(self.feed, self.tails, rows, first, self.rows.alive, strict=True)
        ]

    def grid_pairing(self) -> Pairing:
        """The pairing of the text so far on left-padded grids, from the kept tokens and feeding (no
        re-encoding, no re-alignment): what position selections and conditioning read."""
        batch_b = self._target(left_batch(self.rows.B, self.rows.b_ids()))
        source = left_batch(self.A, [t.ids for t in self.tails])
        width = source.shape[1]
        ends = _left([t.ends for t in self.tails], source.shape[1]).to(source.device)
        source = dataclasses.replace(source, byte_spans=torch.stack([ends, ends], -1),
                                     special_mask=_left([t.special for t in self.tails], width).bool().to(source.device))
        t2s = [[-1] * (batch_b.shape[1] - len(f)) + [t + width - len(tail.ids) if t >= 0 else -1 for t in f]
               for f, tail in zip(self.feed, self.tails, strict=True)]
        return Pairing(source, batch_b, torch.tensor(t2s, dtype=torch.long, device=batch_b.device))

    def _target(self, batch_b: Batch) -> Batch:
        """`batch_b` with B's byte ends and special tokens, so position classes and conditioning can be read."""
        b_ends = _left([row.ends for row in self.rows.rows], batch_b.shape[1]).to(batch_b.device)
        b_special = _left([row.special for row in self.rows.rows], batch_b.shape[1]).bool().to(batch_b.device)
        return dataclasses.replace(batch_b, byte_spans=torch.stack([b_ends, b_ends], -1), special_mask=b_special)

    def pairing(self, batch_b):
        source = self.A.encode([row.text for row in self.rows.rows], padding_side="left")
        ends = (source.byte_spans if source.byte_spans is not None else source.spans)[..., 1]
        b_ends = _left([row.ends for row in self.rows.rows], batch_b.shape[1])
        b_special = _left([row.special for row in self.rows.rows], batch_b.shape[1]).bool()
        valid_b = batch_b.attention_mask.bool()
        t2s = align_spans(ends, source.attention_mask.bool(), source.special_mask.bool(),
                          torch.stack([b_ends, b_ends], -1).to(ends.device), valid_b, b_special.to(valid_b.device),
                          batch_b.input_ids).target_to_source
        return Pairing(source, self._target(batch_b), t2s)


def _left(rows: list[list[int]], width: int) -> Int[Tensor, "batch pos"]:
    return torch.tensor([[0] * (width - len(r)) + [int(x) for x in r] for r in rows], dtype=torch.long)
