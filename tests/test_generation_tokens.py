"""Token-level generation state: text from B's ids, and A's tail re-tokenization against full re-encoding."""

import random

import pytest

from stitch.alignment.spans import token_spans
from stitch.splice.tokens import TailTokenizer, TextRow, token_bytes
from tests.tiny import byte_bpe_tokenizer
from tests.tokenizers_util import corpus, sentencepiece_unigram

TOKENIZERS = {"bpe": lambda: byte_bpe_tokenizer(300), "spm": lambda: sentencepiece_unigram(512)}


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_tail_rule_equals_full_reencoding_on_random_appends(name):
    tok = TOKENIZERS[name]()
    rng = random.Random(0)
    lines = [line for line in corpus(120) if len(line) > 20][:30] + ["a  b   c\t\td", "日本語のテキスト 😀🎉 ok"]
    for line in lines:
        k = rng.randint(1, 4)
        tail = TailTokenizer(tok, line[:k])
        while k < len(line):
            old = list(tail.ids)
            k = min(len(line), k + rng.randint(1, 5))
            first = tail.extend(line[:k])
            full = token_spans(tok, line[:k])
            assert tail.ids == list(full.ids), (line[:k], tail.ids, full.ids)
            assert tail.ends == [e for _, e in full.byte_spans]
            assert tail.special == list(full.special)
            assert old[:first] == tail.ids[:first]  # nothing before the reported change moved


def test_generated_text_keeps_sentencepiece_spaces():
    tok = sentencepiece_unigram(512)
    ids = tok("The quick brown fox", add_special_tokens=False).input_ids
    row = TextRow.start(tok, "The", [1], [0], [True])
    for i in tok(" of the", add_special_tokens=False).input_ids:
        row.append(i)
    assert tok.decode(tok(" of the", add_special_tokens=False).input_ids) == "of the"  # the bug being avoided
    assert row.text == "The of the" and row.continuation == " of the"
    assert ids  # the tokenizer tokenizes plain text


def test_a_character_cut_into_byte_tokens_enters_the_text_once_complete():
    tok = sentencepiece_unigram(512)
    pieces = [tok.convert_tokens_to_ids(f"<0x{b:02X}>") for b in "😀".encode()]
    assert all(token_bytes(tok, p) == bytes([b]) for p, b in zip(pieces, "😀".encode(), strict=True))
    row = TextRow.start(tok, "ok", [1, 5], [0, 2], [True, False])
    for p in pieces[:-1]:
        row.append(p)
        assert row.text == "ok" and row.final_text() == "\ufffd"
    row.append(pieces[-1])
    assert row.text == "ok😀" and row.ends[-4:] == [2, 2, 2, 6]
    row.append(tok.convert_tokens_to_ids("<0xFF>"))  # never valid UTF-8: U+FFFD, at once
    assert row.text == "ok😀\ufffd"
    row.append(tok.eos_token_id)  # a special token adds no text
    assert row.text == "ok😀\ufffd" and row.special[-1]
