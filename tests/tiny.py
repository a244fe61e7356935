"""The suite's tiny models and tokenizers live in `stitch.toy` (the demo uses them too)."""

from stitch.toy import CORPUS, FAMILIES, byte_bpe_tokenizer, tiny_model

__all__ = ["CORPUS", "FAMILIES", "byte_bpe_tokenizer", "tiny_model"]
