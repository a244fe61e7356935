"""Incremental feeding of B's positions during generation equals the full alignment (`align_spans`)."""

import random

import torch

from stitch.alignment.align import align_spans
from stitch.splice.feeding import Growing, tail_feeding, update_feeding


def full_feeding(a_ends, a_special, b_ends, b_special) -> list[int]:
    """Reference: `align_spans` on the whole rows (one row, no padding)."""
    ae, be = torch.tensor([a_ends]), torch.tensor([b_ends])
    t2s = align_spans(ae, torch.ones_like(ae, dtype=torch.bool), torch.tensor([a_special]),
                      torch.stack([be, be], -1), torch.ones_like(be, dtype=torch.bool), torch.tensor([b_special]),
                      be).target_to_source
    return t2s[0].tolist()


def _ends(rng, n_bytes: int, zero_width: float) -> tuple[list[int], list[bool]]:
    """Random token ends covering [0, n_bytes]: cuts, and zero-width (special) tokens now and then."""
    ends, special, at = [], [], 0
    while at < n_bytes:
        if rng.random() < zero_width:
            ends.append(at)
            special.append(True)
            continue
        at = min(n_bytes, at + rng.randint(1, 4))
        ends.append(at)
        special.append(False)
    return ends, special


def test_tail_feeding_equals_align_spans():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 30)
        a, a_sp = _ends(rng, n, 0.1)
        b, b_sp = _ends(rng, n, 0.1)
        assert tail_feeding(a, a_sp, b, b_sp) == full_feeding(a, a_sp, b, b_sp)


def test_update_feeding_equals_full_alignment_on_random_growth():
    # A's tokenization may change from any token on (re-tokenized tail); B only grows at the end.
    rng = random.Random(1)
    for _ in range(60):
        text = rng.randint(2, 8)
        a, a_sp = _ends(rng, text, 0.2)
        b, b_sp = _ends(rng, text, 0.2)
        feed = full_feeding(a, a_sp, b, b_sp)
        for _ in range(15):
            grow = rng.randint(0, 5)
            keep = rng.randint(0, len(a))  # A's tokens before `keep` stay as they were
            text += grow
            new_a, new_sp = _ends(rng, text - (a[keep - 1] if keep else 0), 0.2)
            start = a[keep - 1] if keep else 0
            a, a_sp = a[:keep] + [start + e for e in new_a], a_sp[:keep] + new_sp
            b_new, b_new_sp = _ends(rng, text - b[-1], 0.0)
            b, b_sp = b + [b[-1] + e for e in b_new], b_sp + b_new_sp
            expected = full_feeding(a, a_sp, b, b_sp)
            old = list(feed)
            j0 = update_feeding(feed, a, a_sp, b, b_sp, keep, None)
            assert feed == expected
            assert old[:j0] == expected[:j0]  # nothing before the frontier was recomputed


def test_growing_buffer_keeps_rows_and_grows():
    store = Growing(3, "cpu", torch.float32, capacity=2)
    reference = torch.zeros(0, 3)
    rng = torch.Generator().manual_seed(0)
    for step in range(20):
        first = max(0, len(reference) - step % 3)
        new = torch.randn(1 + step % 4, 3, generator=rng)
        store.write(first, new)
        reference = torch.cat([reference[:first], new])
        assert torch.equal(store.view(), reference)
