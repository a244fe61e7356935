"""The two tokenizer styles of real model pairs, trained on any texts with the `tokenizers` library.

    >>> tok_a = byte_level_bpe(texts, vocab_size=8192)        # Llama-3 / GPT-2 style: bytes as characters
    >>> tok_b = sentencepiece_bpe(texts, vocab_size=2048)     # Llama-2 / Mistral style: "▁" spaces, <0xNN>

Byte-level BPE maps every byte to a printable character first (the GPT-2 alphabet), so it never meets an
unknown character; a regex pre-tokenizer splits words, numbers and punctuation (Llama 3's pattern), and BOS
`<|begin_of_text|>` starts every text. The sentencepiece style writes spaces as "▁", prepends one "▁" to the
text (Mistral's Metaspace, `prepend_scheme="first"`), and spells any character outside its vocabulary as
byte tokens `<0x00>`..`<0xFF>` (ids 3..258, after `<unk>`, `<s>`, `</s>`, as in Llama 2 and Mistral);
`<s>` starts every text. Both are deterministic functions of (texts, vocab_size).
"""

from __future__ import annotations

import json

import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from stitch.checks import check_range

# Llama 3's split pattern (tiktoken cl100k): contractions, words, 1-3 digit numbers, punctuation, spaces
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]
_SP_SPECIAL = ["<unk>", "<s>", "</s>"]


def byte_level_bpe(texts: list[str], vocab_size: int = 8192) -> transformers.PreTrainedTokenizerFast:
    """A Llama-3-style byte-level BPE trained on `texts` (BOS `<|begin_of_text|>`, EOS `<|end_of_text|>`)."""
    check_range("vocab_size", vocab_size, 300, 1_000_000)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    special = ["<|begin_of_text|>", "<|end_of_text|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.token_to_id(special[0]))]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=special[0], eos_token=special[1]
    )


def sentencepiece_bpe(texts: list[str], vocab_size: int = 2048) -> transformers.PreTrainedTokenizerFast:
    """A Mistral-style BPE trained on `texts`: Metaspace "▁", byte fallback `<0xNN>`, BOS `<s>`."""
    check_range("vocab_size", vocab_size, 300, 1_000_000)
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(_BYTE_TOKENS), special_tokens=_SP_SPECIAL, limit_alphabet=150,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok = _with_byte_tokens(tok)
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)
    ])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _with_byte_tokens(tok: Tokenizer) -> Tokenizer:
    """The trained BPE with `<0x00>`..`<0xFF>` at ids 3..258 (the trainer cannot add them itself)."""
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    ordered = sorted(vocab, key=vocab.get)
    specials = ordered[: len(_SP_SPECIAL)]
    rest = [t for t in ordered[len(_SP_SPECIAL):] if t not in _BYTE_TOKENS]
    data["model"]["vocab"] = {t: i for i, t in enumerate(specials + _BYTE_TOKENS + rest)}
    data["model"]["byte_fallback"] = True
    for added in data["added_tokens"]:
        added["id"] = data["model"]["vocab"][added["content"]]
    data["normalizer"] = None
    return Tokenizer.from_str(json.dumps(data))
