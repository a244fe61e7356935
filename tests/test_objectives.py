"""Training objectives against hand computations: CE, KL, MSE, cosine, InfoNCE (own positive never a
negative, repeated states masked), soft contrastive; spec parsing and its errors."""

import math

import pytest
import torch
import torch.nn.functional as F

import stitch
from stitch.losses import IGNORE
from stitch.testing import CORPUS, byte_bpe_tokenizer, tiny_model
from stitch.training.distributed import Dist
from stitch.training.losses import InfoNCE, parse_objective, parse_objectives
from stitch.training.step import LiveInputs, PairView

TEXTS = list(dict.fromkeys(CORPUS))[:3]


@pytest.fixture(scope="module")
def view():
    """A cross-tokenizer pair (so lagging positions exist) and one micro-batch of it."""
    tok_a, tok_b = byte_bpe_tokenizer(300), byte_bpe_tokenizer(280)
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok_a), seed=1), tokenizer=tok_a)
    B = stitch.load_model(tiny_model("llama", vocab_size=len(tok_b), seed=2), tokenizer=tok_b)
    adapter = stitch.adapters.build_adapter("affine", d_source=32, d_target=32)
    with torch.no_grad():
        adapter.weight.add_(0.2 * torch.randn(32, 32, generator=torch.Generator().manual_seed(0)))
    sp = stitch.Splice(A, B, 1, 2, adapter=adapter)
    micro = LiveInputs(A, B, TEXTS, [1], [2], native_logits=True).prepare(range(3))
    return PairView(sp, micro), sp, A, B


def hand_pairs(sp, A, B, positions):
    """A's states → adapter and B's own states at the pairs, computed from the models directly."""
    pairing = sp.align(TEXTS)
    rows, src, tgt = pairing.pairs(True, None if positions == "all" else [positions])
    xa = A.residuals(pairing.source, [1])[1]
    yb = B.residuals(pairing.target, [2])[2]
    return sp.adapter(xa[rows, src]), yb[rows, tgt]


@pytest.mark.parametrize("positions", ["all", "shared", "lagging"])
def test_ce_is_the_splice_loss_on_the_class(view, positions):
    v, sp, _, _ = view
    obj = parse_objective(f"ce:positions={positions}")
    out = sp(TEXTS)
    mask = out.labels != IGNORE
    if positions != "all":
        mask &= sp.align(TEXTS).class_mask(positions)
    hand = F.cross_entropy(out.logits[mask], out.labels[mask], reduction="sum")
    assert obj.count(v) == int(mask.sum()) > 0
    assert obj.loss_sum(v, Dist()).item() == pytest.approx(hand.item(), rel=1e-5)
    if positions == "all":
        assert (obj.loss_sum(v, Dist()) / obj.count(v)).item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_kl_to_b_own_distribution(view):
    v, sp, _, B = view
    obj = parse_objective("kl")
    pairing = sp.align(TEXTS)
    p = torch.softmax(B.logits(pairing.target), -1)
    q = torch.softmax(sp(TEXTS).logits, -1)
    mask = pairing.target.attention_mask.bool()
    hand = sum((p[b, t] * (p[b, t].log() - q[b, t].log())).sum() for b, t in mask.nonzero().tolist())
    assert obj.count(v) == int(mask.sum())
    assert obj.loss_sum(v, Dist()).item() == pytest.approx(hand.item(), rel=1e-4)


@pytest.mark.parametrize("positions", ["all", "shared"])
def test_mse_and_cosine_against_b_own_states(view, positions):
    v, sp, A, B = view
    x, y = hand_pairs(sp, A, B, positions)
    mse = sum(((x[i] - y[i]) ** 2).sum().item() / x.shape[1] for i in range(len(x)))
    cos = sum(1 - (x[i] @ y[i]).item() / (x[i].norm() * y[i].norm()).item() for i in range(len(x)))
    assert parse_objective(f"mse:positions={positions}").count(v) == len(x) > 0
    assert parse_objective(f"mse:positions={positions}").loss_sum(v, Dist()).item() == pytest.approx(
        mse, rel=1e-5
    )
    assert parse_objective(f"cosine:positions={positions}").loss_sum(v, Dist()).item() == pytest.approx(
        cos, rel=1e-4
    )


def hand_infonce(x, y, tau):
    """Row by row: -log exp(s_ii) / Σ_j exp(s_ij) over distinct states j (both directions, halved)."""
    xn, yn = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    total = 0.0
    for a, b in ((xn, yn), (yn, xn)):
        for i in range(len(a)):
            keep = [j for j in range(len(b)) if j == i or (yn[i] @ yn[j]).item() <= 1 - 1e-6]
            logits = [(a[i] @ b[j]).item() / tau for j in keep]
            total += -(logits[keep.index(i)] - math.log(sum(math.exp(s) for s in logits)))
    return total / 2


def test_infonce_matches_a_hand_computation(view):
    v, sp, A, B = view
    x, y = hand_pairs(sp, A, B, "all")
    got = InfoNCE(temperature=0.5).loss_sum(v, Dist()).item()
    assert got == pytest.approx(hand_infonce(x.detach(), y, 0.5), rel=1e-4)


def test_infonce_never_counts_the_own_positive_or_a_repeat_as_a_negative(view):
    v, sp, A, B = view
    x, y = (t.detach() for t in hand_pairs(sp, A, B, "all"))
    y = torch.cat([y, y[:1]])  # the same state twice: a second copy is not a negative of the first
    x = torch.cat([x, x[:1]])

    class Fixed:
        def pair_states(self, positions):
            return x, y

    got = InfoNCE(temperature=0.5, symmetric=False).loss_sum(Fixed(), Dist()).item()
    xn, yn = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    logits = xn @ yn.T / 0.5
    logits[0, -1] = logits[-1, 0] = -math.inf  # the repeat's positive, masked in both rows
    assert got == pytest.approx(
        F.cross_entropy(logits, torch.arange(len(x)), reduction="sum").item(), rel=1e-5
    )
    eye = torch.eye(6)
    perfect = type("Perfect", (), {"pair_states": lambda self, positions: (eye, eye)})()
    # anchors equal to their distinct positives: ~0, where an anchor counted as its own negative gives log 2
    assert InfoNCE(temperature=0.05).loss_sum(perfect, Dist()).item() < 1e-6


def test_soft_contrastive_with_soft_labels(view):
    v, sp, A, B = view
    x, y = hand_pairs(sp, A, B, "all")
    xn, yn = F.normalize(x.detach(), dim=-1), F.normalize(y, dim=-1)
    soft = torch.softmax(yn @ yn.T / 0.2, -1)
    hand = -(soft * torch.log_softmax(xn @ yn.T / 0.1, -1)).sum()
    got = parse_objective("soft_contrastive:temperature=0.1,target_temperature=0.2").loss_sum(v, Dist())
    assert got.item() == pytest.approx(hand.item(), rel=1e-4)


@pytest.mark.parametrize(
    "specs, message",
    [
        (["nope"], "objectives: 'nope' is not one of"),
        (["ce:weight=-1"], "ce: weight: expected a finite number >= 0"),
        (["mse:positions=none"], "mse: positions: 'none' is not one of"),
        (["infonce:temperature=0"], "infonce: temperature: expected a finite number > 0"),
        (["ce:bogus=1"], "not key=value with a key of ce"),
        (["ce", "ce"], "each objective may appear once"),
        ([], "expected a non-empty list"),
    ],
)
def test_bad_specs_name_the_option(specs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        parse_objectives(specs)
