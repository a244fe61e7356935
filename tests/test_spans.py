"""Token spans: exact tiling of the original text, for every kind of tokenizer, checked against HF decoding."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from stitch.alignment import spans_from_ids, token_spans, token_spans_batch
from stitch.alignment.fallback import repair_offsets
from stitch.alignment.surface import _UNICODE_TO_BYTE
from tests import tokenizers_util as tu

TRICKY = [
    "Hello world",
    "  leading and trailing spaces  ",
    "runs   of\t\twhitespace\n\n\nand\r\nnewlines",
    "日本語のテキスト、中文文本。",
    "emoji 😀🎉👍🏽 and 🤗 rare ones 𝔘𝔫𝔦",
    "combining e\u0301 a\u0308\u0323 and ﬁ ligature",
    "control \x07 chars \x1b[0m and \u200b zero width",
    "\n",
    "x",
]
TRAINED = ["byte_level_bpe", "sentencepiece_unigram", "sentencepiece_slow", "nfkc_unigram"]
REAL = ["llama3", "mistral", "mistral_legacy", "mistral_slow"]


def load(name: str):
    if name in REAL:
        tok = tu.real_tokenizer(name)
        if tok is None:
            pytest.skip(f"real tokenizer {name} unavailable (no PyPI access)")
        return tok
    if name == "nfkc_unigram":
        return tu.sentencepiece_unigram(normalize=True)
    return getattr(tu, name)()


def assert_tiles(ts, text: str) -> None:
    """Non-special spans tile the text in bytes and characters; specials are zero-width; the character
    spans are the byte spans rounded down to character boundaries (independent reference: decoding)."""
    data = text.encode("utf-8")
    assert len(ts.ids) == len(ts.spans) == len(ts.special) == len(ts.byte_spans)
    for unit, spans, n in (("bytes", ts.byte_spans, len(data)), ("chars", ts.spans, len(text))):
        pos = 0
        for (s, e), special in zip(spans, ts.special, strict=True):
            if special:
                assert s == e, f"special token not zero-width in {unit}"
                assert s in (0, pos, n)
                continue
            assert s == pos and e >= s, f"gap or overlap in {unit} at {pos}: {(s, e)}"
            pos = e
        assert pos == n, f"{unit}: spans end at {pos}, text has {n}"
    for (bs, be), (cs, ce) in zip(ts.byte_spans, ts.spans, strict=True):
        assert (cs, ce) == (_chars_in(data, bs), _chars_in(data, be))


def _chars_in(data: bytes, b: int) -> int:
    return len(data[:b].decode("utf-8", errors="ignore"))


@pytest.mark.parametrize("name", TRAINED + REAL)
@pytest.mark.parametrize("text", TRICKY)
def test_spans_tile_text_and_keep_ids(name, text):
    tok = load(name)
    ts = token_spans(tok, text)
    assert ts.ids == list(tok(text)["input_ids"])
    assert_tiles(ts, text)


@pytest.mark.parametrize("name", ["byte_level_bpe", "sentencepiece_unigram", "llama3", "mistral"])
@pytest.mark.parametrize("text", TRICKY)
def test_prefix_decodes_to_the_text_up_to_each_end(name, text):
    """Reference: HF's own decode of the first k+1 text tokens is the text up to token k's end (where
    that decode is clean: HF's ByteFallback turns a whole run of byte tokens with a cut character into
    U+FFFD, so those prefixes say nothing)."""
    tok = load(name)
    ts = token_spans(tok, text)
    kept = [(i, e) for i, (_, e), sp in zip(ts.ids, ts.byte_spans, ts.special, strict=True) if not sp]
    data = text.encode("utf-8")
    for k in range(len(kept)):
        decoded = tok.decode([i for i, _ in kept[: k + 1]], clean_up_tokenization_spaces=False)
        expected = data[: kept[k][1]].decode("utf-8", errors="ignore")
        if "\ufffd" not in decoded:
            assert decoded.lstrip(" ") == expected.lstrip(" "), (k, decoded, expected)


@pytest.mark.parametrize("name", ["byte_level_bpe", "sentencepiece_unigram", "llama3", "mistral"])
def test_offsets_and_decoding_paths_agree_with_surface_path(name):
    """Three independent routes to the spans agree (decoding cannot see a leading space that a
    sentencepiece decoder strips, so texts start with a non-space here). Offsets cannot split a run
    of byte-fallback pieces spelling several characters: there they may end earlier, never later."""
    tok = load(name)
    for text in [t for t in TRICKY if not t[0].isspace()]:
        want = token_spans(tok, text, method="surface")
        assert token_spans(tok, text, method="decode").spans == want.spans, text
        got = token_spans(tok, text, method="offsets").spans
        pieces = tok.convert_ids_to_tokens(want.ids)
        for (s, e), (ws, we), piece in zip(got, want.spans, pieces, strict=True):
            assert e <= we and ((s, e) == (ws, we) or piece.startswith("<0x")), (text, piece)


def test_raw_offsets_overlap_where_our_spans_tile():
    tok = tu.byte_level_bpe()
    text = "a 😀 b ﬁ"
    raw = tok(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    assert any(s < prev_e for (s, _), (_, prev_e) in zip(raw[1:], raw[:-1], strict=False)), "precondition"
    ts = token_spans(tok, text, add_special_tokens=False)
    assert_tiles(ts, text)
    # The emoji's byte pieces: only the piece completing the character owns it.
    emoji = [k for k, (s, e) in enumerate(ts.byte_spans) if s >= 2 and e <= 6]
    assert [ts.spans[k][1] - ts.spans[k][0] for k in emoji][-1] == 1


def test_llama3_offsets_checked_not_trusted():
    tok = load("llama3")
    text = "ﬁne 𝔘 x"
    raw = tok(text, return_offsets_mapping=True)["offset_mapping"]
    assert any(s < prev_e for (s, _), (_, prev_e) in zip(raw[2:], raw[1:-1], strict=False)), "precondition"
    assert_tiles(token_spans(tok, text), text)


def test_byte_fallback_pieces_split_one_character():
    tok = load("mistral")
    text = "a 🤗"
    ts = token_spans(tok, text)
    pieces = tok.convert_ids_to_tokens(ts.ids)
    assert pieces[-4:] == ["<0xF0>", "<0x9F>", "<0xA4>", "<0x97>"]
    assert ts.byte_spans[-4:] == [(2, 3), (3, 4), (4, 5), (5, 6)]
    assert ts.spans[-4:] == [(2, 2), (2, 2), (2, 2), (2, 3)]


def test_sentencepiece_prefix_space_covers_nothing():
    tok = load("mistral")
    ts = token_spans(tok, "Hello world")
    assert tok.convert_ids_to_tokens(ts.ids) == ["<s>", "▁Hello", "▁world"]
    assert ts.spans == [(0, 0), (0, 5), (5, 11)] and ts.special == [True, False, False]


def test_special_string_written_in_text_is_text():
    tok = load("llama3")
    text = "hi<|eot_id|>there"
    ts = token_spans(tok, text)
    k = ts.ids.index(tok.convert_tokens_to_ids("<|eot_id|>"))
    assert ts.spans[k] == (2, 12) and not ts.special[k]
    assert ts.spans[0] == (0, 0) and ts.special[0] and ts.ids[0] == 128000


def test_wordpiece_drops_whitespace_lowercases_and_adds_cls_sep():
    tok = tu.wordpiece()
    text = "Hello  World\tagain"
    ts = token_spans(tok, text)
    assert_tiles(ts, text)
    assert ts.special[0] and ts.special[-1] and ts.spans[-1] == (len(text), len(text))
    assert "".join(text[s:e] for s, e in ts.spans).lower().split() == ["hello", "world", "again"]


def test_unknown_characters_are_an_error_naming_them():
    with pytest.raises(ValueError, match=r"cannot represent '🦜'.*\[6, 7\).*\[UNK\]"):
        token_spans(tu.wordpiece(), "hello 🦜 world")


def test_text_a_tokenizer_drops_entirely_is_an_error():
    with pytest.raises(ValueError, match="gives no text tokens for '  '"):
        token_spans(tu.wordpiece(), "  ")


def test_normalising_tokenizer_spans_refer_to_the_original_string():
    tok = load("nfkc_unigram")
    text = "ＦＵＬＬ width ﬁne Café"
    ts = token_spans(tok, text)
    assert_tiles(ts, text)
    normalizer = tok.backend_tokenizer.normalizer
    joined = "".join(normalizer.normalize_str(text[s:e]) for s, e in ts.spans)
    assert joined == normalizer.normalize_str(text)


class ShiftedOffsets:
    """A fast tokenizer whose offsets are off by one (the kind of bug the checks exist for)."""

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __len__(self):
        return len(self._tok)

    def __call__(self, text, **kwargs):
        enc = self._tok(text, **kwargs)
        if "offset_mapping" in enc:
            enc["offset_mapping"] = [(s + 1, e + 1) if e > s else (s, e) for s, e in enc["offset_mapping"]]
        return enc


def test_shifted_offsets_are_rejected_and_spans_come_from_decoding():
    tok = load("nfkc_unigram")
    text = "Hello wide ＷＯＲＬＤ"
    want = token_spans(tok, text)
    shifted = ShiftedOffsets(tok)
    with pytest.raises(ValueError, match="method='offsets'"):
        token_spans(shifted, text, method="offsets")
    assert token_spans(shifted, text).spans == want.spans


@pytest.mark.parametrize(
    ("offsets", "ends"),
    [
        ([(0, 1), (1, 3), (3, 4)], [1, 3, 4]),
        ([(0, 3), (2, 3), (2, 3)], [2, 2, 3]),  # byte pieces of one character: the last completes it
        ([(0, 1), (0, 3), (2, 4)], [0, 2, 4]),  # HF widens cut tokens to whole characters (CJK in byte BPE)
        ([(0, 1), (1, 9)], None),  # out of range
        ([(1, 2), (0, 1)], None),  # backwards
        ([(0, 2), (3, 1)], None),  # reversed span
    ],
)
def test_repair_offsets(offsets, ends):
    got = repair_offsets(np.array(offsets), np.zeros(len(offsets), dtype=bool), 4)
    assert (None if got is None else got[0].tolist()) == ends


def test_slow_tokenizer_has_no_offsets_but_gets_spans():
    tok = load("sentencepiece_slow")
    text = "slow 😀 tokenizer"
    with pytest.raises(ValueError, match="method='offsets'"):
        token_spans(tok, text, method="offsets")
    assert_tiles(token_spans(tok, text), text)
    assert_tiles(token_spans(tok, text, method="decode"), text)


def test_batch_form_equals_single_form():
    tok = tu.byte_level_bpe()
    assert token_spans_batch(tok, TRICKY) == [token_spans(tok, t) for t in TRICKY]


def test_spans_from_ids_with_and_without_the_inserted_mask():
    tok = load("llama3")
    texts = [*TRICKY, "chat<|eot_id|>turn"]
    enc = tok(texts, return_special_tokens_mask=True)
    with_mask = list(zip(enc["input_ids"], enc["special_tokens_mask"], strict=True))
    want = token_spans_batch(tok, texts)
    assert spans_from_ids(tok, texts, with_mask) == want
    assert spans_from_ids(tok, texts, [(ids, None) for ids in enc["input_ids"]]) == want


def test_added_tokens_rebuild_the_table():
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tu.byte_level_bpe().backend_tokenizer.to_str())
    )
    text = "a zebrafish swims"
    before = token_spans(tok, text)
    tok.add_tokens(["zebrafish"])
    after = token_spans(tok, text)
    assert len(after.ids) < len(before.ids) and tok.convert_tokens_to_ids("zebrafish") in after.ids
    assert_tiles(after, text)


def test_gpt2_byte_alphabet_matches_transformers():
    assert _UNICODE_TO_BYTE == {c: b for b, c in bytes_to_unicode().items()}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"tokenizer": "not a tokenizer", "text": "x"},
            TypeError,
            "tokenizer must be a Hugging Face tokenizer",
        ),
        ({"tokenizer": None, "text": 42}, TypeError, "text must be a str, got int"),
        ({"tokenizer": None, "text": ""}, ValueError, "text must be a non-empty string"),
        ({"tokenizer": None, "text": "a\ud800b"}, ValueError, "lone surrogate"),
        ({"tokenizer": None, "text": "x", "method": "magic"}, ValueError, "method must be one of"),
    ],
)
def test_bad_input(kwargs, error, match):
    if kwargs["tokenizer"] is None:
        kwargs["tokenizer"] = tu.byte_level_bpe()
    with pytest.raises(error, match=match):
        token_spans(**kwargs)
