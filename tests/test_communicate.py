"""Activation communication: identity, raw-hook references for sum and mean, positions, controls, bad inputs."""

import pytest
import torch

import stitch
from stitch.splice.communicate import Communicate, make_communication
from stitch.splice.rows import Rows
from tests.test_generation import hf_greedy
from tests.tiny import tiny_model

PA = ["Alice was born in Paris and likes tea.", "The box holds 5 red balls"]
PB = ["Where was Alice born?", "How many balls?"]


@pytest.fixture(scope="module")
def pair(tok):
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok), seed=1), tokenizer=tok)
    B = stitch.load_model(tiny_model("qwen3", vocab_size=len(tok), seed=2), tokenizer=tok)
    return A, B


def test_a_equals_b_same_prompt_replace_at_last_is_b_alone(llama):
    expected = hf_greedy(llama, PB, 6)
    for layer in range(llama.n_layers + 1):
        for use_cache in (True, False):
            out = stitch.communicate(llama, llama, PB, PB, layer, layer, max_new_tokens=6, stop_at_eos=False,
                                     return_ids=True, use_cache=use_cache)
            assert out.token_ids == expected, (layer, use_cache)


def _hooked_first_logits(A, B, k, j, b_index, a_index, fn):
    """Hand reference: A's HF hidden state k at a_index, written by a raw torch pre-hook on B's block j."""
    ba, bb = A.encode(PA, padding_side="left"), B.encode(PB, padding_side="left")
    hidden = A.model(ba.input_ids, attention_mask=ba.attention_mask, output_hidden_states=True).hidden_states[k]
    na, nb = ba.attention_mask.sum(-1), bb.attention_mask.sum(-1)
    cols_b = [[bb.shape[1] - int(n) + (i if i >= 0 else int(n) + i) for i in b_index] for n in nb]
    cols_a = [[ba.shape[1] - int(n) + (i if i >= 0 else int(n) + i) for i in a_index] for n in na]

    def pre_hook(module, args, kwargs):
        h = (args[0] if args else kwargs["hidden_states"]).clone()
        for r in range(h.shape[0]):
            for cb, ca in zip(cols_b[r], cols_a[r], strict=True):
                h[r, cb] = fn(h[r, cb], hidden[r, ca])
        return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

    handle = B.blocks[j].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        logits = B.model(bb.input_ids, attention_mask=bb.attention_mask, position_ids=bb.position_ids).logits
    finally:
        handle.remove()
    return logits[:, -1]


@pytest.mark.parametrize("combine, fn", [
    ("sum", lambda own, a: own + a), ("mean", lambda own, a: (own + a) / 2), ("replace", lambda own, a: a)])
@pytest.mark.parametrize("b_index, a_index", [([-1], [-1]), ([0, -2], [1, -1])])
def test_combines_at_chosen_positions_equal_a_raw_torch_hook(pair, combine, fn, b_index, a_index):
    A, B = pair
    with torch.no_grad():
        expected = _hooked_first_logits(A, B, 2, 1, b_index, a_index, fn)
    for use_cache in (True, False):
        out = stitch.communicate(A, B, PA, PB, 2, 1, combine, positions=b_index, source_positions=a_index,
                                 max_new_tokens=1, output_scores=True, use_cache=use_cache)
        torch.testing.assert_close(out.logits[0], expected.float(), rtol=0, atol=1e-5)


def test_positions_touch_exactly_those_positions(pair):
    A, B = pair
    comm = make_communication(A, B, PA, PB, 2, 1, positions=[0, 2], source_positions=[-1, -1])
    policy = Communicate(comm, Rows.start(B, PB))
    mapped, write = policy.prompt_write()
    target = policy.rows.target
    n = target.attention_mask.sum(-1)
    for r in range(len(PB)):
        start = target.shape[1] - int(n[r])
        assert write.selected[r].nonzero().flatten().tolist() == [start, start + 2]
    assert (mapped[~write.selected] == 0).all()


def test_random_control_has_the_norm_of_the_state_it_replaces(pair):
    A, B = pair
    comm = make_communication(A, B, PA, PB, 2, 1, control="random", positions=[-1, 0], seed=3)
    policy = Communicate(comm, Rows.start(B, PB))
    mapped, write = policy.prompt_write()
    own = B.residuals(policy.rows.target, [1])[1]
    torch.testing.assert_close(mapped[write.selected].norm(dim=-1), own[write.selected].norm(dim=-1))
    real = make_communication(A, B, PA, PB, 2, 1, positions=[-1, 0])
    assert not torch.allclose(Communicate(real, policy.rows).prompt_write()[0][write.selected], mapped[write.selected])


def test_no_communication_control_is_b_alone(pair):
    A, B = pair
    out = stitch.communicate(A, B, PA, PB, 2, 1, control="none", max_new_tokens=6, stop_at_eos=False, return_ids=True)
    assert out.token_ids == hf_greedy(B, PB, 6)


@pytest.mark.parametrize("options", [dict(inject="generated"), dict(inject="generated", combine="mean"),
                                     dict(combine="sum", positions=[0, -1]), dict(control="random")], ids=str)
def test_cached_equals_reference(pair, options):
    A, B = pair
    kw = dict(max_new_tokens=8, stop_at_eos=False, return_ids=True, **options)
    cached = stitch.communicate(A, B, PA, PB, 2, 1, **kw)
    assert cached.token_ids == stitch.communicate(A, B, PA, PB, 2, 1, use_cache=False, **kw).token_ids


def test_generated_injection_changes_generated_tokens_only_after_the_prompt(pair):
    A, B = pair
    kw = dict(max_new_tokens=4, stop_at_eos=False, output_scores=True)
    prompt_only = stitch.communicate(A, B, PA, PB, 2, 1, **kw)
    also = stitch.communicate(A, B, PA, PB, 2, 1, inject="generated", **kw)
    torch.testing.assert_close(prompt_only.logits[0], also.logits[0])  # the prompt pass is the same
    assert (prompt_only.logits[1] - also.logits[1]).abs().max() > 1e-4


def test_bad_inputs_are_named_errors(pair, tok):
    A, B = pair
    with pytest.raises(ValueError, match="k"):
        stitch.communicate(A, B, PA, PB, A.n_layers + 1, 1)
    with pytest.raises(ValueError, match="j"):
        stitch.communicate(A, B, PA, PB, 1, -1)
    with pytest.raises(ValueError, match="prompts_b: 1 prompts for 2"):
        stitch.communicate(A, B, PA, PB[:1], 1, 1)
    wide = stitch.load_model(tiny_model("llama", vocab_size=len(tok), d_model=48), tokenizer=tok)
    with pytest.raises(ValueError, match="adapter: None needs equal widths"):
        stitch.communicate(A, wide, PA, PB, 1, 1)
    with pytest.raises(ValueError, match="inject"):
        stitch.communicate(A, B, PA, PB, 1, 1, inject="both")
    with pytest.raises(ValueError, match="combine"):
        stitch.communicate(A, B, PA, PB, 1, 1, combine="max")
    with pytest.raises(ValueError, match="source_positions: 3 indices for 2"):
        stitch.communicate(A, B, PA, PB, 1, 1, positions=[0, 1], source_positions=[0, 1, 2])
    with pytest.raises(ValueError, match="positions: index 40 is beyond"):
        stitch.communicate(A, B, PA, PB, 1, 1, positions=[40])
    adapter = stitch.adapters.Projection(A.d_model, 48)
    assert len(stitch.communicate(A, wide, PA, PB, 1, 1, adapter=adapter, max_new_tokens=2)) == 2


def test_a_positions_mapping_equals_the_two_lists(pair):
    A, B = pair
    kw = dict(max_new_tokens=1, output_scores=True, combine="sum")
    mapped = stitch.communicate(A, B, PA, PB, 2, 1, positions={0: 1, -1: -1}, **kw)
    lists = stitch.communicate(A, B, PA, PB, 2, 1, positions=[0, -1], source_positions=[1, -1], **kw)
    torch.testing.assert_close(mapped.logits[0], lists.logits[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="source_positions: give either a positions mapping"):
        stitch.communicate(A, B, PA, PB, 2, 1, positions={0: 1}, source_positions=[0])


def test_per_pair_adapters_and_their_errors(pair, tok):
    """A {(k, j): adapter} mapping is looked up per pair (a missing pair is named before anything runs);
    bad methods and kinds are refused before any model runs."""
    from analyses.communication import communication_sweep, pair_adapters
    from analyses.evaluation import load_tasks, tasks_path

    A, B = pair
    wide = stitch.load_model(tiny_model("llama", vocab_size=len(tok), d_model=48), tokenizer=tok)
    examples = load_tasks(tasks_path("qa"))[:1]
    adapters = {(1, 1): stitch.adapters.Projection(A.d_model, 48), (2, 1): stitch.adapters.Projection(A.d_model, 48)}
    records = communication_sweep(A, wide, examples, [1, 2], [1], adapter=adapters, conditions=["activation"],
                                  max_new_tokens=2, progress=False)
    for (k, j), ad in adapters.items():
        [record] = [r for r in records if (r["k"], r["j"]) == (k, j)]
        expected = stitch.communicate(A, wide, [examples[0].prompt_a], [examples[0].prompt_b], k, j, adapter=ad,
                                      max_new_tokens=2, stop_at_eos=False)
        assert record["prediction"] == expected[0]
    with pytest.raises(ValueError, match=r"adapter: no adapter for \(k, j\) = \(3, 1\)"):
        communication_sweep(A, wide, examples, [1, 3], [1], adapter=adapters, progress=False)
    with pytest.raises(ValueError, match="method"):
        pair_adapters(A, wide, ["a text"], [(1, 1)], method="magic")
    with pytest.raises(ValueError, match="kind"):
        pair_adapters(A, wide, ["a text"], [(1, 1)], kind="mlp")
    with pytest.raises(ValueError, match="ridge: only method='closed_form'"):
        pair_adapters(A, wide, ["a text"], [(1, 1)], method="trained", ridge=0.1)


def test_other_positions_write_exactly_there_as_a_raw_hook_sees_it(pair):
    """What enters B's block j (a raw torch pre-hook records it) is B's own HF hidden state j at every real
    prompt position except the chosen ones, which hold A's HF hidden state k at its source positions."""
    A, B = pair
    seen = []
    handle = B.blocks[1].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone()),
        with_kwargs=True)
    try:
        with torch.no_grad():
            stitch.communicate(A, B, PA, PB, 2, 1, positions=[0, 2], source_positions=[-1, 1], max_new_tokens=1)
    finally:
        handle.remove()
    ba, bb = A.encode(PA, padding_side="left"), B.encode(PB, padding_side="left")
    with torch.no_grad():
        a_states = A.model(ba.input_ids, attention_mask=ba.attention_mask, output_hidden_states=True).hidden_states[2]
        own = B.model(bb.input_ids, attention_mask=bb.attention_mask, position_ids=bb.position_ids,
                      output_hidden_states=True).hidden_states[1]
    [written] = seen  # the prompt pass (generation stops after one token)
    for r in range(len(PB)):
        start, a_start = bb.shape[1] - int(bb.attention_mask[r].sum()), ba.shape[1] - int(ba.attention_mask[r].sum())
        changed = ((written[r] - own[r]).abs().amax(-1) > 1e-6).nonzero().flatten().tolist()
        assert [c - start for c in changed if c >= start] == [0, 2]
        torch.testing.assert_close(written[r, start], a_states[r, -1], rtol=0, atol=1e-5)
        torch.testing.assert_close(written[r, start + 2], a_states[r, a_start + 1], rtol=0, atol=1e-5)
