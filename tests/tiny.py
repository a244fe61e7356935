"""The suite's tiny models and tokenizers live in `stitch.testing` (the demo uses them too)."""

from stitch.testing import CORPUS, FAMILIES, byte_bpe_tokenizer, tiny_model

__all__ = ["CORPUS", "FAMILIES", "byte_bpe_tokenizer", "tiny_model"]
