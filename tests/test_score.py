"""The one evaluator: position classes, reference losses and loss recovered against independent computations."""

import math

import pytest
import torch

import stitch
from analyses.sweep import layer_sweep
from stitch.adapters.fit import EMBEDDINGS, collect_stats
from stitch.alignment.pairing import pair_texts
from stitch.losses import IGNORE, next_token_labels, token_cross_entropy
from stitch.splice.score import CLASS_NAMES, TOLERANCE, References, loss_recovered, score_splices
from stitch.testing import CORPUS, byte_bpe_tokenizer, tiny_model, train_briefly
from stitch.training.distributed import Dist
from stitch.training.evaluate import eval_references, evaluate, evaluate_splices

TRAIN = CORPUS[:6]
HELD_OUT = [
    "The lazy dog jumps over the quick brown fox.",
    "Two models read the same text, cut into different tokens: café 🙂.",
    "Numbers like 2026 and symbols # $ appear.",
]


@pytest.fixture(scope="module")
def lagging_pair():
    """A's tokens are longer than B's (1200- vs 300-token BPE), A has no BOS: all three classes occur."""
    tok_a, tok_b = byte_bpe_tokenizer(1200, bos=False), byte_bpe_tokenizer(300)
    A = stitch.load_model(
        train_briefly(tiny_model("llama", len(tok_a), seed=11), tok_a, TRAIN, steps=12), tokenizer=tok_a
    )
    B = stitch.load_model(
        train_briefly(tiny_model("qwen2", len(tok_b), n_layers=4, d_model=48, seed=12), tok_b, TRAIN, steps=12),
        tokenizer=tok_b,
    )
    return A, B


@pytest.fixture(scope="module")
def trained_b(tok):
    return stitch.load_model(train_briefly(tiny_model("llama", len(tok), seed=13), tok, TRAIN, steps=15), tokenizer=tok)


def independent_classes(A, B, text: str) -> list[str]:
    """Class of every B token of `text` from the two tokenizations' byte spans, one token at a time."""
    a_ends = [int(e) for (s, e) in A.encode([text]).byte_spans[0].tolist()]
    classes = []
    for _, end in B.encode([text]).byte_spans[0].tolist():
        finished = [e for e in a_ends if e <= end]
        classes.append("none" if not finished else "shared" if max(finished) == end else "lagging")
    return classes


def test_class_counts_equal_an_independent_count_from_byte_spans(lagging_pair):
    A, B = lagging_pair
    sp = stitch.Splice(A, B, 2, 2, adapter=stitch.adapters.Projection(A.d_model, B.d_model))
    refs = References.build(A, B, TRAIN, [sp.write_point])
    [score] = score_splices([sp], HELD_OUT, refs, progress=False)
    expected = dict.fromkeys(CLASS_NAMES, 0)
    for text in HELD_OUT:
        classes = independent_classes(A, B, text)[:-1]  # the last token has no next-token label
        expected["all"] += len(classes)
        for c in classes:
            expected[c] += 1
    assert {name: c.n_tokens for name, c in score.classes.items()} == expected
    assert min(expected.values()) > 0  # the pair exercises every class
    assert sum(score.classes[c].n_tokens for c in ("shared", "lagging", "none")) == score.classes["all"].n_tokens


def test_identical_tokenizers_make_every_position_shared(trained_b):
    sp = stitch.Splice(trained_b, trained_b, 2)
    [score] = score_splices([sp], HELD_OUT, References.build(trained_b, trained_b, TRAIN, [2]), progress=False)
    assert score.classes["lagging"].n_tokens == score.classes["none"].n_tokens == 0
    assert score.classes["shared"] == score.classes["all"]


def test_context_free_ce_is_the_add_one_unigram_of_the_training_labels(lagging_pair):
    A, B = lagging_pair
    counts = torch.zeros(B.vocab_size, dtype=torch.float64)
    for text in TRAIN:
        ids = B.encode([text]).input_ids[0].tolist()
        for token in ids[1:]:  # every token after the first is some position's next-token label
            counts[token] += 1
    probs = (counts + 1) / (counts.sum() + B.vocab_size)
    labels = [t for text in HELD_OUT for t in B.encode([text]).input_ids[0].tolist()[1:]]
    expected = -sum(math.log(probs[t]) for t in labels) / len(labels)
    sp = stitch.Splice(A, B, 1, 1, adapter=stitch.adapters.Projection(A.d_model, B.d_model))
    [score] = score_splices([sp], HELD_OUT, References.build(A, B, TRAIN, [1]), progress=False)
    assert score.classes["all"].ce_context_free == pytest.approx(expected, abs=1e-5)


def test_native_and_spliced_ce_per_class_match_a_hand_computation(lagging_pair):
    A, B = lagging_pair
    sp = stitch.Splice(A, B, 2, 3, adapter=stitch.adapters.Projection(A.d_model, B.d_model))
    [score] = score_splices([sp], HELD_OUT, References.build(A, B, TRAIN, [3]), batch_size=2, progress=False)
    target = B.encode(HELD_OUT)
    labels = next_token_labels(target)
    native = token_cross_entropy(B.logits(target), labels)
    spliced = token_cross_entropy(sp(HELD_OUT).logits, labels)
    classes = pair_texts(A, B, HELD_OUT).classes
    for name, code in (("shared", 0), ("lagging", 1), ("none", 2)):
        keep = (labels != IGNORE) & (classes == code)
        assert score.classes[name].ce_native == pytest.approx(native[keep].mean().item(), abs=1e-5)
        assert score.classes[name].ce_spliced == pytest.approx(spliced[keep].mean().item(), abs=1e-5)


def test_source_grid_scores_native_ce_on_exactly_its_labels(lagging_pair):
    A, B = lagging_pair
    pair = dict(adapter=stitch.adapters.Projection(A.d_model, B.d_model))
    target_sp = stitch.Splice(A, B, 2, 2, alignment="target", **pair)
    source_sp = stitch.Splice(A, B, 2, 2, alignment="source", **pair)
    refs = References.build(A, B, TRAIN, [2])
    target_score, source_score = score_splices([target_sp, source_sp], HELD_OUT, refs, progress=False)
    shared = target_score.classes["shared"]
    assert source_score.classes["all"] == source_score.classes["shared"]
    assert source_score.classes["shared"].n_tokens == shared.n_tokens
    for field in ("ce_native", "ce_context_free", "ce_mean_ablation"):
        assert getattr(source_score.classes["shared"], field) == pytest.approx(getattr(shared, field), abs=1e-5)
    assert source_score.ce_spliced == pytest.approx(source_sp(HELD_OUT).loss.item(), abs=1e-5)


def test_b_spliced_into_itself_recovers_everything_at_every_layer(trained_b):
    B = trained_b
    splices = [stitch.Splice(B, B, layer) for layer in range(B.n_layers + 1)]
    refs = References.build(B, B, TRAIN, range(B.n_layers + 1))
    for score in score_splices(splices, HELD_OUT, refs, progress=False):
        assert score.ce_context_free - score.ce_native > 0.5  # B's own states tell it a lot
        assert score.loss_recovered == pytest.approx(1.0, abs=1e-6)


def test_a_constant_state_recovers_nothing(trained_b):
    """Mean-ablation as a splice: an affine map that ignores its input and emits B's mean layer-2 state."""
    B = trained_b
    refs = References.build(B, B, TRAIN, [2])
    constant = stitch.adapters.Affine(B.d_model, B.d_model)
    with torch.no_grad():
        constant.weight.zero_()
        constant.bias.copy_(refs.mean_states[2].float())
    [score] = score_splices([stitch.Splice(B, B, 2, adapter=constant)], HELD_OUT, refs, progress=False)
    assert score.loss_recovered <= 0 + 0.05
    assert score.ce_spliced == pytest.approx(score.ce_mean_ablation, abs=1e-5)


@pytest.mark.parametrize("grid", ["target", "source"])
def test_sweep_and_training_evaluation_give_identical_records(lagging_pair, grid):
    A, B = lagging_pair
    [record] = layer_sweep(
        A, B, TRAIN, HELD_OUT, pairs=[(2, 3)], alignment=grid, baseline=False, kind="affine", progress=False
    )
    sp = stitch.Splice(A, B, 2, 3, adapter=record.adapter, alignment=grid)
    evaluated = evaluate(sp, HELD_OUT, Dist(), 8, eval_references(sp, TRAIN, Dist(), 8))
    for name in CLASS_NAMES:
        ours, theirs = record.classes[name], evaluated["classes"][name]
        for field, value in theirs.items():
            mine = getattr(ours, field)
            if value is None:
                assert math.isnan(mine), (name, field)
            elif isinstance(value, float):
                assert mine == pytest.approx(value, abs=1e-6), (name, field)
            else:
                assert mine == value, (name, field)


def test_loss_recovered_says_why_it_is_undefined():
    assert loss_recovered(2.0, 2.0, 4.0) == (1.0, "")
    assert loss_recovered(4.0, 2.0, 4.0) == (0.0, "")
    assert loss_recovered(5.0, 2.0, 4.0)[0] == -0.5
    value, note = loss_recovered(3.0, 2.0, 2.0 + TOLERANCE / 2)
    assert math.isnan(value) and "within" in note


def test_records_are_strict_json(lagging_pair):
    import json

    A, B = lagging_pair
    [record] = layer_sweep(A, B, TRAIN, ["Hi there"], pairs=[(1, 1)], baseline=False, progress=False)
    text = json.dumps(record.to_dict(), allow_nan=False)  # NaN (an empty class) is written as null
    back = type(record).from_dict(json.loads(text))
    assert back.classes["all"] == record.classes["all"]


def test_bad_evaluator_arguments(lagging_pair):
    A, B = lagging_pair
    sp = stitch.Splice(A, B, 2, 2, adapter=stitch.adapters.Projection(A.d_model, B.d_model))
    refs = References.build(A, B, TRAIN, [2])
    with pytest.raises(ValueError, match="references: no mean state at 3"):
        score_splices([stitch.Splice(A, B, 2, 3, adapter=sp.adapter)], HELD_OUT, refs, progress=False)
    with pytest.raises(ValueError, match="splices: expected at least one"):
        score_splices([], HELD_OUT, refs)
    with pytest.raises(ValueError, match="batch_size"):
        score_splices([sp], HELD_OUT, refs, batch_size=0)
    self_a = stitch.Splice(A, A, 1)  # A has no BOS: a one-character text has no next-token label
    with pytest.raises(ValueError, match="texts: no next-token label in 1 texts"):
        score_splices([self_a], ["a"], References.build(A, A, TRAIN, [1]), progress=False)


def test_long_texts_are_scored_as_their_chunks(lagging_pair):
    """max_length: a long text is scored exactly as its chunks, each scored as a text of its own."""
    from stitch.chunks import chunk_texts

    A, B = lagging_pair
    long_text = " ".join(HELD_OUT * 6)
    sp = stitch.Splice(A, B, 2, 2, adapter=stitch.adapters.Projection(A.d_model, B.d_model))
    refs = References.build(A, B, TRAIN, [2])
    chunks = [c.text for c in chunk_texts([long_text], [A.tokenizer, B.tokenizer], max_length=40)]
    assert len(chunks) > 3 and "".join(chunks) == long_text
    [chunked] = score_splices([sp], [long_text], refs, max_length=40, progress=False)
    [separate] = score_splices([sp], chunks, refs, progress=False)
    assert chunked == separate


def assert_same_references(mine: References, theirs: References) -> None:
    assert torch.equal(mine.unigram_log_probs, theirs.unigram_log_probs)
    assert mine.n_train_labels == theirs.n_train_labels and list(mine.mean_states) == list(theirs.mean_states)
    for point, mean in theirs.mean_states.items():
        assert torch.equal(mine.mean_states[point], mean), point


def test_references_fed_by_a_fit_pass_equal_references_build(lagging_pair):
    """The accumulator fed by collect_stats (fitting on shared pairs only) gives exactly References.build's
    references, which are taken over every target-grid pair, whatever the fit keeps."""
    A, B = lagging_pair
    sums = References.accumulator(B, [3, EMBEDDINGS, 3])
    collect_stats(A, B, TRAIN, [(2, 1)], batch_size=2, classes=["shared"], observers=[sums], progress=False)
    built = References.build(A, B, TRAIN, [3, EMBEDDINGS], batch_size=2)
    assert_same_references(sums.references(), built)
    assert list(built.mean_states) == [3, EMBEDDINGS]  # a repeated write point is summed once


def counting_block0(model):
    """(calls, handle): a list that grows by one per forward of the model's first block."""
    calls = []
    return calls, model.blocks[0].register_forward_hook(lambda *_: calls.append(1))


def test_a_run_of_several_pairs_estimates_and_scores_them_in_one_pass(lagging_pair):
    """Training's references: one pass of B over the training texts for every pair (one per pair before: 6
    block-0 calls here); its evaluation: one pass of A over the held-out texts (one per pair before: 3)."""
    A, B = lagging_pair
    ad = stitch.adapters.Projection(A.d_model, B.d_model)
    splices = [stitch.Splice(A, B, n, m, adapter=ad, injection=inj)
               for n, m, inj in ((2, 3, "residual"), (1, 1, "residual"), (2, 0, "inputs_embeds"))]
    calls_b, handle = counting_block0(B)
    try:
        shared = eval_references(splices, TRAIN, Dist(), 4)
    finally:
        handle.remove()
    assert len(calls_b) == 2  # the two batches of training texts, once
    calls_a, handle = counting_block0(A)
    try:
        together = evaluate_splices(splices, HELD_OUT, Dist(), 8, shared)
    finally:
        handle.remove()
    assert len(calls_a) == 1  # one batch of held-out texts, once for the three splices
    for sp, record in zip(splices, together, strict=True):
        alone = eval_references(sp, TRAIN, Dist(), 4)
        assert torch.equal(shared.unigram_log_probs, alone.unigram_log_probs)
        assert torch.equal(shared.mean_states[sp.write_point], alone.mean_states[sp.write_point])
        assert record == evaluate(sp, HELD_OUT, Dist(), 8, alone)
