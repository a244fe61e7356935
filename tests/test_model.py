"""HookedLM against the HF forward, for every architecture family in the table."""

import pytest
import torch

import stitch
from tests.tiny import FAMILIES, tiny_model


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tok):
    hf = tiny_model(request.param, vocab_size=len(tok))
    return hf, stitch.load_model(hf, tokenizer=tok)


def hf_forward(hf, batch):
    return hf(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        output_hidden_states=True,
    )


@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_and_residuals_equal_hf(family_model, texts, side):
    hf, A = family_model
    batch = A.encode(texts, padding_side=side)
    ref = hf_forward(hf, batch)
    real = batch.attention_mask.bool()
    assert torch.equal(A.logits(batch), ref.logits)
    res = A.residuals(batch, layers=list(range(A.n_layers + 1)))
    assert sorted(res) == list(range(A.n_layers + 1))
    for layer in range(A.n_layers):  # HF's last entry is after the final norm: not layer L
        torch.testing.assert_close(res[layer][real], ref.hidden_states[layer][real], rtol=0, atol=1e-6)


@pytest.mark.parametrize("side", ["right", "left"])
def test_run_from_every_layer_reproduces_logits(family_model, texts, side):
    hf, A = family_model
    batch = A.encode(texts, padding_side=side)
    full = A.logits(batch)
    res = A.residuals(batch, layers=list(range(A.n_layers + 1)))
    for layer in range(A.n_layers + 1):
        diff = (A.run_from(res[layer], layer, batch) - full)[batch.attention_mask.bool()].abs().max()
        assert diff <= 1e-5, (layer, diff)


def test_layer_L_is_the_last_block_output_before_final_norm(family_model, texts):
    hf, A = family_model
    batch = A.encode(texts)
    last = {}
    handle = A.blocks[-1].register_forward_hook(lambda m, i, o: last.setdefault("out", o))
    try:
        A.logits(batch)
    finally:
        handle.remove()
    out = last["out"][0] if isinstance(last["out"], tuple) else last["out"]
    assert torch.equal(A.residuals(batch, [A.n_layers])[A.n_layers], out)


def test_padding_does_not_change_a_texts_logits(llama, texts):
    for side in ("left", "right"):
        batch = llama.encode(texts, padding_side=side)
        logits = llama.logits(batch)
        for row, text in enumerate(texts):
            alone = llama.logits([text])[0]
            padded = logits[row][batch.attention_mask[row].bool()]
            torch.testing.assert_close(padded, alone, rtol=0, atol=1e-5)


def test_encode_spans_and_masks(llama):
    batch = llama.encode(["Hello world", "Hi"], padding_side="left")
    assert batch.input_ids.shape == batch.attention_mask.shape == batch.special_mask.shape
    assert batch.attention_mask[1, 0] == 0 and batch.spans[1, 0].tolist() == [-1, -1]
    assert batch.input_ids[0, 0] == llama.tokenizer.bos_token_id and batch.special_mask[0, 0]
    assert batch.spans[0, 0].tolist() == [0, 0]  # BOS is zero-width
    n_real = int(batch.attention_mask[1].sum())  # positions count real tokens only
    assert batch.position_ids[1, -n_real:].tolist() == list(range(n_real))
    no_bos = llama.encode(["Hello world"], add_special_tokens=False)
    assert no_bos.input_ids[0, 0] != llama.tokenizer.bos_token_id


def test_tokenizer_without_pad_token_just_works(llama):
    assert llama.tokenizer.pad_token is None
    batch = llama.encode(["a longer text here", "b"])
    assert batch.input_ids[1, -1] == llama.pad_token_id
    assert torch.isfinite(llama.logits(batch)).all()


def test_residuals_runs_only_needed_blocks(llama, texts):
    calls = count_block_calls(llama)
    with calls:
        llama.residuals(texts, layers=[1])
    assert calls.counts == [1, 0, 0]


class count_block_calls:
    """Counts, per block, how often its computation ran: calls of its first leaf module with weights.

    Hooks on the block itself would also count skipped (pass-through) calls, which compute nothing.
    """

    def __init__(self, model):
        self.model, self.counts, self.handles = model, [0] * model.n_layers, []

    def __enter__(self):
        for i, block in enumerate(self.model.blocks):
            leaf = next(m for m in block.modules() if not list(m.children()) and list(m.parameters()))
            self.handles.append(
                leaf.register_forward_hook(lambda *a, i=i: self.counts.__setitem__(i, self.counts[i] + 1))
            )
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def test_load_from_local_directory_and_wrappers(tmp_path, tok, texts):
    hf = tiny_model("qwen2", vocab_size=len(tok))
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    A = stitch.load_model(str(tmp_path))
    B = stitch.load_model(hf, tokenizer=tok)
    torch.testing.assert_close(A.logits(texts), B.logits(texts), rtol=0, atol=1e-6)
    again = stitch.load_model(B)
    assert again.model is B.model and again.tokenizer is B.tokenizer
    half = stitch.load_model(str(tmp_path), dtype="bfloat16", device="auto")
    assert half.dtype == torch.bfloat16 and half.device.type == "cpu"


def test_every_architecture_in_the_table_is_tested():
    assert sorted(FAMILIES) == sorted(stitch.ARCHITECTURES)
