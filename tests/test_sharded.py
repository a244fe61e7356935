"""Models sharded with device_map: every tensor stitch hands a block is on that block's device, moved once.

On CPU, "meta" stands in for a second GPU: a tiny model's upper blocks are dispatched there with
accelerate's own hooks (what `device_map` installs). Elementwise ops and `torch.where` check
their operands' devices as on two GPUs (a matmul of a meta input by CPU weights does not), so a write
mixing block M-1's and block M's devices raises (the sum, mean, hybrid and cached-write cases did on the
code before). Meta tensors hold no data, so these tests check placement and moves; the two-GPU test at the
end checks values against one device (its body also ran on CPU with both "GPUs" set to "cpu" and
accelerate's hooks forced).
"""

import pytest
import torch
from accelerate import dispatch_model
from accelerate.hooks import AlignDevicesHook, SequentialHook, add_hook_to_module

import stitch
from analyses.layer_similarity import layer_similarity, splice_cka
from stitch.adapters.conditioned import TokenConditioned
from stitch.models.kv import KVCache, Step
from stitch.models.loading import random_init
from stitch.models.placement import module_device, record_moves
from stitch.splice.score import References, score_splices
from tests.tiny import byte_bpe_tokenizer, tiny_model

META = torch.device("meta")
CPU = torch.device("cpu")


def shard(hf, device_map: dict) -> None:
    """Dispatch `hf`'s modules as accelerate's `dispatch_model` does: weights moved, an AlignDevicesHook each."""
    for name, device in device_map.items():
        module = hf.get_submodule(name).to(device)
        add_hook_to_module(module, AlignDevicesHook(execution_device=device, io_same_device=False))
    hf.hf_device_map = dict(device_map)


def llama_map(split: int, n_layers: int, upper) -> dict:
    """Embedding and blocks [0, split) on the CPU; blocks [split, L), the final norm and lm_head on `upper`."""
    layers = {f"model.layers.{i}": "cpu" if i < split else upper for i in range(n_layers)}
    return {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", **layers, "model.norm": upper, "lm_head": upper}


@pytest.fixture(scope="module")
def pair():
    tok_a, tok_b = byte_bpe_tokenizer(300), byte_bpe_tokenizer(400, bos=False)
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok_a)), tokenizer=tok_a)
    hf = tiny_model("llama", vocab_size=len(tok_b), n_layers=4, seed=1)
    shard(hf, llama_map(2, 4, "meta"))
    return A, stitch.load_model(hf, tokenizer=tok_b)  # weights on "meta" under accelerate's hooks: accepted


def test_devices_are_read_from_the_module_that_consumes(pair):
    _, B = pair
    assert (B.device, [B.device_of(i) for i in range(5)], B.output_device) == (CPU, [CPU, CPU, META, META, META], META)
    offloaded = torch.nn.Linear(2, 2)  # weights kept on the CPU, computed on "meta": accelerate's offload
    offloaded._hf_hook = SequentialHook(AlignDevicesHook(execution_device="meta"))
    assert module_device(offloaded) == META and offloaded.weight.device == CPU
    whole = tiny_model("llama", vocab_size=len(B.tokenizer), n_layers=4)
    shard(whole, llama_map(2, 4, "meta"))
    whole._hf_hook = AlignDevicesHook(io_same_device=True)  # dispatch_model's: outputs back to the inputs' device
    assert stitch.HookedLM(whole, B.tokenizer).output_device == CPU
    bare = tiny_model("llama", vocab_size=len(B.tokenizer)).to("meta")  # meta without a hook: never loaded
    with pytest.raises(ValueError, match=r"model: its weights are on the 'meta' device"):
        stitch.load_model(bare, tokenizer=B.tokenizer)


@pytest.mark.parametrize(
    "options, moved",
    [
        (dict(), ["states"]),
        (dict(combine="sum"), ["states", "own"]),
        (dict(combine="mean", positions="shared"), ["states", "own", "mask"]),
        (dict(injection="hybrid"), ["states", "own", "mask"]),
        (dict(adapter="conditioned"), ["states", "condition"]),
    ],
    ids=["replace", "sum", "mean-shared", "hybrid", "token-conditioned"],
)
def test_splice_writes_on_block_m_device_and_moves_each_tensor_once(pair, texts, options, moved):
    A, B = pair
    adapter = TokenConditioned(32, 32) if options.pop("adapter", None) else stitch.adapters.Affine(32)
    sp = stitch.Splice(A, B, 2, 2, adapter=adapter, **options)  # B's block 2 is the first on "meta"
    assert sp.write_device == META and next(adapter.parameters()).device == META
    with record_moves() as moves:
        out = sp(texts[:2])
    assert out.logits.device == META and out.labels.device == META  # logits come out on lm_head's device
    n_s, n_t = out.source.shape, out.target.shape
    shapes = {"states": (*n_s, A.d_model), "own": (*n_t, B.d_model), "mask": n_t,
              "condition": (*n_t, getattr(adapter, "d_condition", 0))}
    assert [m.shape for m in moves] == [shapes[k] for k in moved]  # each once, nothing else crosses
    assert all(m.source == CPU and m.device == sp.write_device for m in moves)
    assert [m.dtype for m in moves if m.shape == shapes["states"]] == [torch.float32]


def test_the_adapter_is_placed_once_on_block_m_device_and_recorded(pair):
    A, B = pair
    adapter = stitch.adapters.Affine(32)
    with record_moves() as moves:
        sp = stitch.Splice(A, B, 2, 2, adapter=adapter)
    assert [(m.shape, m.source, m.device) for m in moves] == [((32, 32), CPU, META), ((32,), CPU, META)]
    assert {p.device for p in adapter.parameters()} == {sp.write_device} == {META}
    with record_moves() as moves:
        stitch.Splice(A, B, 3, 3, adapter=adapter)  # already there: nothing moves
    assert moves == []


def test_inputs_embeds_write_on_the_embedding_device(pair, texts):
    A, B = pair
    sp = stitch.Splice(A, B, 2, adapter=stitch.adapters.Affine(32), injection="inputs_embeds", combine="sum")
    with record_moves() as moves:
        out = sp(texts[:2])
    assert sp.write_device == CPU and moves == [] and out.logits.device == META


def test_cached_forward_keeps_each_cache_layer_on_its_block_device(pair):
    A, B = pair
    batch = B.encode(["one two three", "four"])
    sp = stitch.Splice(A, B, 2, 2, adapter=stitch.adapters.Affine(32), combine="sum")
    kv = KVCache.empty(B, 2)
    mapped = torch.zeros(*batch.shape, B.d_model, device=sp.write_device)
    step = Step(batch.input_ids, batch.position_ids, batch.attention_mask.bool())
    with record_moves() as moves:
        last = sp.strategy.run_cached(B, mapped, kv, step, 2, sp.write(batch.attention_mask.bool()))
    assert last.device == B.output_device
    assert [layer.keys.device for layer in kv.cache.layers] == [B.device_of(i) for i in range(B.n_layers)]
    assert [(m.shape, m.device) for m in moves] == [((*batch.shape, B.d_model), META), (batch.shape, META)]
    one = Step(batch.input_ids[:, -1:], batch.position_ids[:, -1:] + 1, torch.ones(2, 1, dtype=torch.bool))
    assert sp.strategy.run_cached(B, mapped[:, -1:], kv, one, 2, sp.write(None)).device == META
    assert [layer.keys.shape[2] for layer in kv.cache.layers] == [batch.shape[1] + 1] * B.n_layers


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_model_sharded_over_two_gpus_gives_the_one_gpu_results(texts):
    tok_a, tok_b = byte_bpe_tokenizer(300), byte_bpe_tokenizer(400, bos=False)
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok_a)), tokenizer=tok_a, device="cuda:0")
    one = stitch.load_model(tiny_model("llama", vocab_size=len(tok_b), n_layers=4, seed=1), tokenizer=tok_b,
                            device="cuda:0")
    hf = tiny_model("llama", vocab_size=len(tok_b), n_layers=4, seed=1)
    device_map = llama_map(2, 4, "cuda:1") | {"model.embed_tokens": "cuda:0", "model.rotary_emb": "cuda:0",
                                              "model.layers.0": "cuda:0", "model.layers.1": "cuda:0"}
    dispatch_model(hf, device_map, skip_keys=hf._skip_keys_device_placement)  # what from_pretrained calls
    two = stitch.HookedLM(hf, tok_b)  # as from_pretrained(device_map=...) leaves it: hooks, hf_device_map
    assert (two.device_of(1), two.device_of(2), two.output_device) == (torch.device("cuda:0"), torch.device("cuda:1"),
                                                                      torch.device("cuda:0"))
    for options in (dict(), dict(combine="sum", positions="shared"), dict(injection="hybrid")):
        adapter = stitch.adapters.Affine(32)
        ref = stitch.Splice(A, one, 2, 2, adapter=adapter, **options)
        got = stitch.Splice(A, two, 2, 2, adapter=adapter, **options)
        torch.testing.assert_close(got(texts).logits.cpu(), ref(texts).logits.cpu(), rtol=0, atol=1e-5)
        prompts = ["The quick brown", "Numbers like"]
        assert got.generate(prompts, max_new_tokens=6) == ref.generate(prompts, max_new_tokens=6)
    conditioned = TokenConditioned(32, 32)
    torch.nn.init.normal_(conditioned.condition_weight, std=0.1)  # the conditioning must matter
    got = stitch.Splice(A, two, 2, 2, adapter=conditioned)(texts).logits.cpu()
    torch.testing.assert_close(got, stitch.Splice(A, one, 2, 2, adapter=conditioned)(texts).logits.cpu(),
                               rtol=0, atol=1e-5)
    fit_one = stitch.fit_adapter(A, one, texts, 2, 2, kind="affine", progress=False)
    fit_two = stitch.fit_adapter(A, two, texts, 2, 2, kind="affine", progress=False)
    torch.testing.assert_close(fit_two.weight.cpu(), fit_one.weight.cpu(), rtol=1e-4, atol=1e-5)
    for pairing in ("mean", "shared"):
        rec_two = layer_similarity(A, two, texts, pairing=pairing)
        torch.testing.assert_close(rec_two.matrix, layer_similarity(A, one, texts, pairing=pairing).matrix)
    scores = [
        score_splices([stitch.Splice(A, b, 2, 2, adapter=fit, combine="sum", positions="shared")], texts,
                      References.build(A, b, texts, [2]), progress=False)[0].classes["all"]
        for b, fit in ((one, fit_one), (two, fit_two))
    ]
    for field in ("n_tokens", "ce_spliced", "ce_native", "ce_context_free", "ce_mean_ablation"):
        assert getattr(scores[1], field) == pytest.approx(getattr(scores[0], field), abs=1e-4), field
    for options in (dict(combine="sum"), dict(inject="generated", control="random")):
        talk = [stitch.communicate(A, b, ["A reads this", "and this"], ["B says", "B also"], 2, 2, max_new_tokens=4,
                                   seed=0, **options) for b in (one, two)]
        assert talk[1] == talk[0], options
    sim_two = splice_cka(A, two, fit_two, 2, 2, texts)  # the adapter sits on B's side, A's states go to it
    assert sim_two.after == pytest.approx(splice_cka(A, one, fit_one, 2, 2, texts).after, abs=1e-4)


def test_random_init_control_of_a_sharded_model_is_sharded_alike(pair, monkeypatch):
    _, B = pair
    built_on = []

    def dispatch(hf, device_map):  # accelerate's dispatch_model takes "meta" for offloading: shard() as above
        built_on.append({p.device for p in hf.parameters()})
        shard(hf, device_map)
        return hf

    monkeypatch.setattr(stitch.models.loading, "_dispatch", dispatch)
    R = random_init(B, seed=0)
    assert built_on == [{CPU}]  # built whole on the CPU, never on one of B's devices
    assert R.model.hf_device_map == B.model.hf_device_map
    assert [R.device_of(i) for i in range(B.n_layers + 1)] == [B.device_of(i) for i in range(B.n_layers + 1)]
    assert not torch.equal(R.model.model.embed_tokens.weight, B.model.model.embed_tokens.weight)  # fresh weights
