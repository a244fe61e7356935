"""TransformerLens and nnsight interop: same residuals, same splice, no hooks left, originals still work."""

import copy
import re
import runpy
from pathlib import Path

import pytest
import torch

import stitch
from stitch.models.hooks import skip_blocks
from stitch.models.interop import (
    NNsightSplice,
    nnsight_splice,
    read_layer,
    to_nnsight,
    trace_inputs,
    unwrap_model,
)
from stitch.testing import byte_bpe_tokenizer, tiny_model

nnsight = pytest.importorskip("nnsight")
tl_bridge = pytest.importorskip("transformer_lens.model_bridge")
TransformerBridge = tl_bridge.TransformerBridge

pytestmark = pytest.mark.filterwarnings("ignore:LanguageModel is deprecated:FutureWarning")
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hi", "Tabs\tand\nnewlines, café 東京 🙂."]
DOC = Path(__file__).resolve().parents[1] / "docs" / "interop.md"


def _skip_blocks_keeps_instance_forward() -> bool:
    """Does stitch restore a `forward` that a wrapper (nnsight) keeps on the instance, writing only __dict__?"""
    block = torch.nn.Linear(2, 2)
    block.__dict__["forward"] = own = object()
    with skip_blocks([block]):
        pass
    return block.__dict__.get("forward") is own


needs_skip_fix = pytest.mark.xfail(
    not _skip_blocks_keeps_instance_forward(),
    strict=True,
    reason="stitch.models.hooks.skip_blocks sets `block.forward` through setattr and pops it afterwards: it drops "
    "nnsight's per-instance forward and, on a TransformerBridge block, permanently replaces the wrapped "
    "HF layer's forward (see the interop report)",
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine two threads cost ~50x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Llama and its tokenizer saved with save_pretrained, as a user's local directory."""
    path = tmp_path_factory.mktemp("llama")
    tok = byte_bpe_tokenizer()
    tiny_model("llama", vocab_size=len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def boot(path):
    return TransformerBridge.boot_transformers(path, device="cpu", dtype=torch.float32)


def hook_snapshot(module: torch.nn.Module) -> dict:
    """Every torch hook and per-instance forward in the tree (transformers adds capture hooks of its own)."""
    return {
        name: (tuple(m._forward_pre_hooks), tuple(m._forward_hooks), m.__dict__.get("forward"))
        for name, m in module.named_modules()
    }


def assert_close_real(a, b, batch, atol=1e-5):
    real = batch.attention_mask.bool()
    torch.testing.assert_close(a[real], b[real], atol=atol, rtol=0)


# ---- TransformerLens ------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_residuals_equal_bridge_resid_pre(model_dir, padding_side):
    A, bridge = stitch.load_model(model_dir), boot(model_dir)
    batch = A.encode(TEXTS, padding_side=padding_side)
    res = A.residuals(batch, list(range(A.n_layers + 1)))
    logits, cache = bridge.run_with_cache(
        batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
    )
    for layer in range(A.n_layers):
        assert_close_real(res[layer], cache[f"blocks.{layer}.hook_resid_pre"], batch)
    assert_close_real(res[A.n_layers], cache["ln_final.hook_in"], batch)
    assert_close_real(A.logits(batch), logits, batch)


def test_load_model_takes_the_bridge_module_without_copy(model_dir):
    bridge = boot(model_dir)
    weight = bridge.original_model.get_input_embeddings().weight
    batch = stitch.load_model(model_dir).encode(TEXTS)
    reference, cache = bridge.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask)
    before = hook_snapshot(bridge.original_model)  # after a first forward: the bridge wires hooks of its own
    A = stitch.load_model(bridge)
    assert A.model is bridge.original_model and A.tokenizer is bridge.tokenizer
    assert unwrap_model(bridge)[0] is bridge.original_model and unwrap_model(A.model) is None
    assert A.model.get_input_embeddings().weight.data_ptr() == weight.data_ptr()
    assert_close_real(A.residuals(batch, [1])[1], cache["blocks.1.hook_resid_pre"], batch)
    A.run_with_cache(batch)
    assert hook_snapshot(bridge.original_model) == before
    assert_close_real(bridge(batch.input_ids, attention_mask=batch.attention_mask), reference, batch, atol=0)


@needs_skip_fix
def test_bridge_still_works_after_run_from(model_dir):
    bridge = boot(model_dir)
    A = stitch.load_model(bridge)
    batch = A.encode(TEXTS)
    reference = bridge(batch.input_ids, attention_mask=batch.attention_mask)
    before = hook_snapshot(bridge.original_model)
    A.run_from(A.residuals(batch, [2])[2], 2, batch)  # skips blocks 0 and 1
    assert hook_snapshot(bridge.original_model) == before
    assert_close_real(bridge(batch.input_ids, attention_mask=batch.attention_mask), reference, batch, atol=0)


def test_transformer_lens_hook_functions_run_unchanged(model_dir):
    bridge = boot(model_dir)
    A = stitch.load_model(bridge)
    batch, seen = A.encode(TEXTS), []

    def halve_position_1(resid, hook):
        seen.append(hook.name)
        resid = resid.clone()
        resid[:, 1] *= 0.5
        return resid

    hooks = [("blocks.1.hook_resid_pre", halve_position_1)]
    ours = A.run_with_hooks(batch, fwd_hooks=hooks)
    theirs = bridge.run_with_hooks(batch.input_ids, attention_mask=batch.attention_mask, fwd_hooks=hooks)
    assert seen == ["blocks.1.hook_resid_pre", "blocks.1.hook_in"]  # TL reports its canonical name
    assert_close_real(ours, theirs, batch)
    assert not torch.allclose(ours, A.logits(batch))


def test_bridge_in_compatibility_mode_is_refused(model_dir):
    bridge = boot(model_dir)
    bridge.enable_compatibility_mode(disable_warnings=True)
    with pytest.raises(ValueError, match="compatibility mode"):
        stitch.load_model(bridge)


# ---- nnsight --------------------------------------------------------------------------------------


@pytest.fixture
def pair():
    """Fresh models per test: until skip_blocks is fixed, stitch's run_from breaks nnsight on skipped blocks."""
    tok = byte_bpe_tokenizer()
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok)), tokenizer=tok)
    B = stitch.load_model(tiny_model("gpt2", vocab_size=len(tok), d_model=48, seed=1), tokenizer=tok)
    return A, B


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_residuals_equal_nnsight_layer_inputs(pair, padding_side):
    A, _ = pair
    batch = A.encode(TEXTS, padding_side=padding_side)
    res = A.residuals(batch, list(range(A.n_layers + 1)))
    for envoy in (nnsight.NNsight(A.model), to_nnsight(A)):
        with envoy.trace(**trace_inputs(batch)):
            inputs = nnsight.save(
                [envoy.model.layers[i].input for i in range(A.n_layers)] + [envoy.model.norm.input]
            )
            logits = envoy.output.logits.save()
        for layer in range(A.n_layers + 1):
            assert_close_real(res[layer], inputs[layer], batch)
        assert_close_real(logits, A.logits(batch), batch)
    lm = nnsight.LanguageModel(A.model, tokenizer=copy.deepcopy(A.tokenizer))  # nnsight's own tokenization
    with lm.trace(TEXTS):
        first = lm.model.layers[1].input.save()
    assert_close_real(
        first, A.residuals(A.encode(TEXTS, padding_side="left"), [1])[1], A.encode(TEXTS, padding_side="left")
    )


def test_load_model_takes_nnsight_models_without_copy(model_dir):
    tok = byte_bpe_tokenizer()
    lazy = nnsight.LanguageModel(model_dir, tokenizer=copy.deepcopy(tok))  # built on the meta device
    assert not lazy.dispatched
    A = stitch.load_model(lazy)
    assert lazy.dispatched and A.model is lazy._module and A.tokenizer is lazy.tokenizer
    hf = tiny_model("llama", vocab_size=len(tok))
    plain = nnsight.NNsight(hf)
    assert stitch.load_model(plain, tokenizer=tok).model is hf
    with pytest.raises(ValueError, match="tokenizer"):
        stitch.load_model(plain)
    with pytest.raises(TypeError, match="root model"):
        stitch.load_model(plain.model)


def test_nnsight_and_stitch_share_modules_without_leftovers(pair):
    A, _ = pair
    envoy = to_nnsight(A)
    batch = A.encode(TEXTS)
    with envoy.trace(**trace_inputs(batch)):
        reference = envoy.output.logits.save()
    before = hook_snapshot(A.model)
    A.residuals(batch, [1, 3])
    A.run_with_cache(batch)
    with pytest.raises(RuntimeError, match="boom"), A.hooks([("blocks.1.hook_resid_pre", _boom)]):
        A.logits(batch)
    assert hook_snapshot(A.model) == before
    with envoy.trace(**trace_inputs(batch)):
        again = envoy.output.logits.save()
    assert torch.equal(again, reference)


@needs_skip_fix
def test_nnsight_still_works_after_run_from(pair):
    A, _ = pair
    envoy = to_nnsight(A)
    batch = A.encode(TEXTS)
    before = hook_snapshot(A.model)
    A.run_from(A.residuals(batch, [2])[2], 2, batch)
    assert hook_snapshot(A.model) == before
    with envoy.trace(**trace_inputs(batch)):
        first = envoy.model.layers[0].output.save()
    assert first.shape == (*batch.shape, A.d_model)


def _boom(resid, hook):
    raise RuntimeError("boom")


# ---- the splice inside nnsight --------------------------------------------------------------------


def _affine(d_source, d_target, seed=0):
    torch.manual_seed(seed)
    adapter = stitch.adapters.Affine(d_source, d_target)
    with torch.no_grad():
        for param in adapter.parameters():
            param.normal_(0, 0.2)
    return adapter


def _nnsight_logits(splice, texts):
    ns = NNsightSplice(splice)
    with ns.trace(texts):
        ns.apply()
        logits = ns.target.output.logits.save()
    return logits, ns.loss(logits)


@pytest.mark.parametrize("layers", [(0, 0), (1, 2), (3, 3), (2, 0), (3, 1)])
def test_nnsight_splice_equals_splice(pair, layers):
    A, B = pair
    splice = stitch.Splice(A, B, *layers, adapter=_affine(A.d_model, B.d_model))
    logits, loss = _nnsight_logits(splice, TEXTS)  # before stitch's own run (see needs_skip_fix)
    out = splice(TEXTS)
    torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, out.loss, atol=1e-5, rtol=0)


def test_nnsight_self_stitch_identity_and_embedding_baseline(pair):
    A, B = pair
    batch = A.encode(TEXTS, padding_side="left")
    for layer in (0, 2, A.n_layers):
        splice = stitch.Splice(A, A, layer, padding_side="left")
        torch.testing.assert_close(_nnsight_logits(splice, TEXTS)[0], A.logits(batch), atol=1e-5, rtol=0)
    baseline = stitch.Splice(A, B, 2, adapter=_affine(A.d_model, B.d_model), injection="inputs_embeds")
    logits, _ = _nnsight_logits(baseline, TEXTS)
    torch.testing.assert_close(logits, baseline(TEXTS).logits, atol=1e-5, rtol=0)


def test_nnsight_splice_across_tokenizers(pair):
    pytest.importorskip("stitch.alignment.align")
    A, _ = pair
    tok_b = byte_bpe_tokenizer(vocab_size=400)
    B = stitch.load_model(tiny_model("qwen2", vocab_size=len(tok_b), seed=2), tokenizer=tok_b)
    splices = [stitch.Splice(A, B, 2, 1, alignment=alignment) for alignment in ("target", "source")]
    traced = [_nnsight_logits(splice, TEXTS) for splice in splices]  # before stitch's own runs
    for splice, (logits, loss) in zip(splices, traced, strict=True):
        out = splice(TEXTS)
        torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(loss, out.loss, atol=1e-5, rtol=0)


def test_nnsight_splice_composes_runs_only_needed_blocks_and_trains(pair):
    A, B = pair
    adapter = _affine(A.d_model, B.d_model)
    splice = stitch.Splice(A, B, 2, 1, adapter=adapter)
    ns, calls = NNsightSplice(splice), {"A": 0, "B": 0}
    handles = [
        block.mlp.register_forward_hook(lambda *_, key=key: calls.__setitem__(key, calls[key] + 1))
        for key, model in (("A", A), ("B", B))
        for block in model.blocks
    ]
    try:
        with ns.trace(TEXTS):
            ns.apply()
            ns.target.transformer.h[2].input[:] *= 0.5  # the user's own intervention
            logits = ns.target.output.logits.save()
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {"A": 2, "B": B.n_layers - 1}
    ns.loss(logits).backward()
    nnsight_grads = [p.grad.clone() for p in adapter.parameters()]
    adapter.zero_grad()
    batch = ns.aligned.target
    mapped = adapter(A.residuals(batch, [2])[2])
    halve = [("blocks.2.hook_resid_pre", lambda resid, hook: resid * 0.5)]
    expected = B.run_from(mapped, 1, batch, fwd_hooks=halve)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    ns.loss(expected).backward()
    for ours, theirs in zip(nnsight_grads, adapter.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs.grad, atol=1e-5, rtol=1e-4)


def test_nnsight_helpers_on_plain_nnsight_models(pair):
    A, B = pair
    nA, nB = nnsight.NNsight(A.model), nnsight.NNsight(B.model)
    adapter = _affine(A.d_model, B.d_model, seed=3)
    batch = A.encode(TEXTS)
    with nB.trace(**trace_inputs(batch)):
        nnsight_splice(nA, nB, trace_inputs(batch), 3, 3, adapter)
        logits = nB.output.logits.save()
    expected = B.run_from(adapter(A.residuals(batch, [3])[3]), 3, batch)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    with nA.trace(**trace_inputs(batch)):
        last = read_layer(nA, A.n_layers).save()
    torch.testing.assert_close(last, A.residuals(batch, [A.n_layers])[A.n_layers], atol=1e-5, rtol=0)


def test_interop_errors(pair):
    A, B = pair
    with pytest.raises(TypeError, match="HookedLM"):
        to_nnsight(A.model)
    envoy = nnsight.NNsight(A.model)
    with pytest.raises(ValueError, match="out of range"):
        with envoy.trace(**trace_inputs(A.encode(TEXTS))):
            read_layer(envoy, A.n_layers + 1)
    splice = stitch.Splice(A, A, 1)
    with pytest.raises(RuntimeError, match="inside"):
        NNsightSplice(splice).apply()
    with pytest.raises(ValueError, match="target"):
        NNsightSplice(splice, target=nnsight.NNsight(B.model))
    with pytest.raises(ValueError, match="injection"):
        nnsight_splice(envoy, envoy, {}, 1, injection="embeddings")


# ---- the docs page --------------------------------------------------------------------------------


@needs_skip_fix  # the page calls run_from on a bridge-loaded model
def test_docs_page_runs(tmp_path, model_dir):
    """docs/interop.md, every python block in order, with the set-up block pointed at tiny local models."""
    blocks = re.findall(r"```python( setup)?\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks[0][0] == " setup" and len(blocks) >= 10
    other = tmp_path / "other"
    tok = byte_bpe_tokenizer()
    tiny_model("qwen2", vocab_size=len(tok), d_model=48, seed=4).save_pretrained(other)
    tok.save_pretrained(other)
    setup = f"import torch\nimport stitch\npath, path_b = {model_dir!r}, {str(other)!r}\ntexts = {TEXTS!r}\n"
    script = tmp_path / "interop_doc.py"  # a real file: nnsight reads the source of its `with` blocks
    script.write_text(setup + "\n".join(code for _, code in blocks[1:]))
    runpy.run_path(str(script), run_name="__main__")
