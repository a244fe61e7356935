"""Property tests over random unicode: emoji, CJK, combining marks, mixed whitespace, control characters."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stitch.alignment import TokenAlignment, token_spans
from tests.test_alignment import check_alignment
from tests.test_spans import assert_tiles, load

CHARACTERS = st.one_of(
    st.sampled_from(list("abcdefgh XYZ019.,'-")),
    st.sampled_from(list(" \t\n\r\x0b\x0c\u00a0\u2003\u3000\u200b")),  # mixed whitespace
    st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),  # emoji
    st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),  # CJK
    st.characters(categories=["Mn", "Me"]),  # combining marks
    st.characters(categories=["Cc", "Cf"]),  # control and format characters
    st.characters(codec="utf-8"),  # anything else UTF-8 can hold
)
TEXTS = st.text(CHARACTERS, min_size=1, max_size=40)
PAIRS = [
    ("byte_level_bpe", "sentencepiece_unigram"),  # the 4x vocabulary pair, both directions
    ("sentencepiece_unigram", "byte_level_bpe"),
    ("llama3", "mistral"),
    ("mistral", "llama3"),
    ("byte_level_bpe", "mistral"),
    ("llama3", "llama3"),
]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.mark.parametrize(("source", "target"), PAIRS)
def test_alignment_is_causal_maximal_monotone(source, target):
    src, tgt = load(source), load(target)

    @SETTINGS
    @given(TEXTS)
    def check(text):
        al = TokenAlignment.build(text, src, tgt)
        check_alignment(al)
        if source == target:
            assert al.target_to_source.tolist() == list(range(len(al.target_ids)))

    check()


@pytest.mark.parametrize(
    "name",
    [
        "byte_level_bpe",
        "sentencepiece_unigram",
        "sentencepiece_slow",
        "nfkc_unigram",
        "llama3",
        "mistral",
        "mistral_legacy",
    ],
)
def test_spans_tile_random_text(name):
    tok = load(name)

    @SETTINGS
    @given(TEXTS)
    def check(text):
        ts = token_spans(tok, text)
        assert ts.ids == list(tok(text)["input_ids"])
        assert_tiles(ts, text)

    check()
