"""layer_sweep on held-out texts that give it nothing to score (issue 14, item 12).

The lead is rewriting sweep scoring on the one evaluator (stitch/splice/score.py); this regression test
is written against the behaviour that rewrite must have, and is expected to fail until it lands.
"""

import pytest

import stitch
from analyses.sweep import layer_sweep
from tests.tiny import CORPUS, byte_bpe_tokenizer, tiny_model


@pytest.mark.xfail(
    strict=False,
    reason="issue 14 item 12: ZeroDivisionError today; passes once the lead's evaluator (splice/score.py) "
    "names eval texts without a next token",
)
def test_eval_texts_without_a_next_token_are_a_clear_error():
    tok = byte_bpe_tokenizer(bos=False)  # no BOS: a one-token text has no next-token label at all
    A = stitch.load_model(tiny_model("llama", vocab_size=len(tok)), tokenizer=tok)
    assert A.encode(["a", "H"]).input_ids.shape == (2, 1)
    with pytest.raises(ValueError, match=r"eval_texts.*(next token|label)"):
        layer_sweep(A, A, CORPUS[:6], ["a", "H"], source_layers=[1], kind="affine", progress=False)
