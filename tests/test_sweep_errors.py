"""layer_sweep on held-out texts that give it nothing to score (issue 14, item 12).

Before the one evaluator (stitch/splice/score.py) this divided by zero; it is a regression test of that
evaluator's check, written by the issue-14 helper for the lead's sweep rewrite.
"""

import pytest

import stitch
from analyses.sweep import layer_sweep
from tests.tiny import CORPUS, byte_bpe_tokenizer, tiny_model


def test_eval_texts_without_a_next_token_are_a_clear_error():
    tok = byte_bpe_tokenizer(bos=False)  # no BOS: a one-token text has no next-token label at all
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok)), tokenizer=tok)
    assert A.encode(["a", "H"]).input_ids.shape == (2, 1)
    with pytest.raises(ValueError, match=r"texts: no next-token label in 2 texts"):
        layer_sweep(A, A, CORPUS[:6], ["a", "H"], source_layers=[1], kind="affine", progress=False)
