"""TokenAlignment and align_batch: causal to the byte, maximal, monotone, identity for one tokenizer."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from stitch.alignment import IGNORE, TokenAlignment, align_batch, token_spans_batch
from stitch.batch import Batch, positions_from_mask
from tests import tokenizers_util as tu
from tests.test_spans import TRICKY, load

PARAGRAPH = (
    "Stitching feeds one model's residual stream to another. Llama-3 has 128K tokens; Mistral v0.3 has 32K.\n"
    "\tCode: for i in range(10): print(i ** 2)  # squares\n"
    "Unicode: naïve café, 日本語のテキスト, emoji 😀🤗👍🏽, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, e\u0301 and  double  spaces.  "
)
PAIRS = [
    ("byte_level_bpe", "sentencepiece_unigram"),
    ("sentencepiece_unigram", "byte_level_bpe"),
    ("llama3", "mistral"),
    ("mistral", "llama3"),
    ("llama3", "sentencepiece_unigram"),
]


def ranks(ends: list[int]) -> list[int]:
    """Rank of each token among the tokens ending at the same place (ends are sorted)."""
    out = []
    for k, e in enumerate(ends):
        out.append(out[-1] + 1 if k and ends[k - 1] == e else 0)
    return out


def reference_target_to_source(src_ends: list[int], tgt_ends: list[int]) -> list[int]:
    """Brute force: the last source token with (end, rank among equal ends) <= the target token's."""
    rs, rt = ranks(src_ends), ranks(tgt_ends)
    result = []
    for e_t, r_t in zip(tgt_ends, rt, strict=True):
        result.append(
            max((i for i, key in enumerate(zip(src_ends, rs, strict=True)) if key <= (e_t, r_t)), default=-1)
        )
    return result


def check_alignment(al: TokenAlignment) -> None:
    """Every property the design promises, checked against brute-force definitions."""
    s_end, t_end = al.source_byte_spans[:, 1].tolist(), al.target_byte_spans[:, 1].tolist()
    t_start = al.target_byte_spans[:, 0].tolist()
    t2s = al.target_to_source.tolist()
    assert t2s == reference_target_to_source(s_end, t_end)
    for j, i in enumerate(t2s):  # causal, and maximal: the next source token has read past j's end
        if i >= 0:
            assert s_end[i] <= t_end[j]
        if i + 1 < len(s_end):
            assert s_end[i + 1] >= t_end[j]
    assert all(a <= b for a, b in zip(t2s, t2s[1:], strict=False)), "monotone"
    s_special, t_special = al.source_special.tolist(), al.target_special.tolist()
    for i, j in al.shared_boundaries.tolist():
        assert s_end[i] == t_end[j] and not s_special[i] and not t_special[j] and t2s[j] == i
    both = {e for e, sp in zip(s_end, s_special, strict=True) if not sp}
    both &= {e for e, sp in zip(t_end, t_special, strict=True) if not sp}
    found = {t_end[j] for _, j in al.shared_boundaries.tolist()}
    assert found <= both and both - found <= {0}
    rs, rt = ranks(s_end), ranks(t_end)
    for i, (nxt, label) in enumerate(zip(al.source_next.tolist(), al.source_labels.tolist(), strict=True)):
        starts_here = [
            j
            for j, s in enumerate(t_start)
            if s == s_end[i] and not t_special[j] and (t_end[j], rt[j]) > (s_end[i], rs[i])
        ]
        assert nxt == (starts_here[0] if starts_here else -1)
        assert label == (al.target_ids[nxt].item() if nxt >= 0 else IGNORE)


@pytest.mark.parametrize(("source", "target"), PAIRS)
@pytest.mark.parametrize("text", [PARAGRAPH, *TRICKY])
def test_alignment_properties_on_fixed_texts(source, target, text):
    src, tgt = load(source), load(target)
    al = TokenAlignment.build(text, src, tgt)
    assert al.source_ids.tolist() == list(src(text)["input_ids"])
    assert al.target_ids.tolist() == list(tgt(text)["input_ids"])
    check_alignment(al)


def test_real_pair_shares_most_word_boundaries():
    al = TokenAlignment.build(PARAGRAPH, load("llama3"), load("mistral"))
    n_target_text = int((~al.target_special).sum())
    assert 0.5 < len(al.shared_boundaries) / n_target_text < 1.0
    assert (al.target_to_source >= 0).all()  # Llama-3's BOS feeds everything before its first text token


def test_causal_to_the_byte_where_characters_are_split():
    """Where a source token ends inside a character, character spans would let it feed a target token
    that ends at that character's start; byte spans do not."""
    text = "Hello  world 😀 日本語 𝔘𝔫𝔦 x"
    al = TokenAlignment.build(text, load("byte_level_bpe"), load("sentencepiece_unigram"))
    s_char, t_char = al.source_spans[:, 1], al.target_spans[:, 1]
    s_byte, t_byte = al.source_byte_spans[:, 1], al.target_byte_spans[:, 1]
    leaks = [
        (i, j)
        for i in range(len(s_char))
        for j in range(len(t_char))
        if s_char[i] <= t_char[j] and s_byte[i] > t_byte[j]
    ]
    assert leaks, "precondition: some source token ends inside a character"
    for i, j in leaks:
        assert al.target_to_source[j] < i


def _copy(tok):
    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=tok.bos_token, eos_token=tok.eos_token, unk_token=tok.unk_token
    )


@pytest.mark.parametrize(
    "name", ["byte_level_bpe", "sentencepiece_unigram", "llama3", "mistral", "mistral_slow"]
)
def test_identical_tokenizers_give_the_identity(name):
    tok = load(name)
    other = tok if name == "mistral_slow" else _copy(tok)
    al = TokenAlignment.build(PARAGRAPH, tok, other)
    n = len(al.source_ids)
    assert torch.equal(al.source_ids, al.target_ids)
    assert al.target_to_source.tolist() == list(range(n))
    assert al.source_labels.tolist() == al.source_ids[1:].tolist() + [IGNORE]
    assert al.shared_boundaries.tolist() == [[j, j] for j in range(n) if not al.target_special[j]]


def make_batch(tok, texts: list[str], side: str = "right", with_bytes: bool = True) -> Batch:
    enc = token_spans_batch(tok, texts)
    width = max(len(e.ids) for e in enc)
    ids = torch.zeros(len(texts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    spans, byte_spans = torch.full((len(texts), width, 2), -1), torch.full((len(texts), width, 2), -1)
    special = torch.ones(len(texts), width, dtype=torch.bool)
    for row, e in enumerate(enc):
        cols = slice(width - len(e.ids), width) if side == "left" else slice(0, len(e.ids))
        ids[row, cols], mask[row, cols] = torch.tensor(e.ids), 1
        spans[row, cols], byte_spans[row, cols] = torch.tensor(e.spans), torch.tensor(e.byte_spans)
        special[row, cols] = torch.tensor(e.special)
    return Batch(
        texts,
        ids,
        mask,
        positions_from_mask(mask),
        spans,
        special,
        side,
        byte_spans=byte_spans if with_bytes else None,
    )


@pytest.mark.parametrize(("source", "target"), [PAIRS[0], PAIRS[2]])
@pytest.mark.parametrize("side", ["right", "left"])
def test_batch_form_equals_single_texts(source, target, side):
    src, tgt = load(source), load(target)
    texts = [PARAGRAPH, "Hi", TRICKY[4], TRICKY[2]]
    sb, tb = make_batch(src, texts, side), make_batch(tgt, texts, side)
    t2s, labels = align_batch(sb, tb)
    for row, text in enumerate(texts):
        single = TokenAlignment.build(text, src, tgt)
        s_cols, t_cols = sb.attention_mask[row].bool(), tb.attention_mask[row].bool()
        s_off = int(torch.nonzero(s_cols)[0])
        got = t2s[row][t_cols]
        assert torch.equal(torch.where(got >= 0, got - s_off, -1), single.target_to_source)
        assert torch.equal(labels[row][s_cols], single.source_labels)
        assert (t2s[row][~t_cols] == -1).all() and (labels[row][~s_cols] == IGNORE).all()


def test_batch_with_character_spans_only_stays_causal_in_characters():
    src, tgt = load("byte_level_bpe"), load("sentencepiece_unigram")
    texts = [PARAGRAPH, TRICKY[4]]
    sb, tb = make_batch(src, texts, with_bytes=False), make_batch(tgt, texts, with_bytes=False)
    aligned = align_batch(sb, tb)
    for row in range(len(texts)):
        for j, i in enumerate(aligned.target_to_source[row].tolist()):
            if i >= 0:
                assert sb.spans[row, i, 1] <= tb.spans[row, j, 1]
    assert aligned.shared.any()


def test_bad_inputs_name_the_parameter():
    a, b = load("byte_level_bpe"), load("sentencepiece_unigram")
    with pytest.raises(TypeError, match=r"text must be a str.*\(text, source_tokenizer, target_tokenizer\)"):
        TokenAlignment.build(a, "some text", b)
    with pytest.raises(TypeError, match="source_tokenizer must be a Hugging Face tokenizer"):
        TokenAlignment.build("some text", "gpt2", b)
    with pytest.raises(TypeError, match="target_tokenizer must be a Hugging Face tokenizer.*got int"):
        TokenAlignment.build("some text", a, 3)
    with pytest.raises(ValueError, match="text must be a non-empty string"):
        TokenAlignment.build("", a, b)
    with pytest.raises(ValueError, match=r"target_tokenizer .*cannot represent '🦜'"):
        TokenAlignment.build("a 🦜 b", a, tu.wordpiece())
    two, three = make_batch(a, ["x", "y"]), make_batch(b, ["x", "y", "z"])
    with pytest.raises(ValueError, match="batch sizes differ: 2 vs 3"):
        align_batch(two, three)
    with pytest.raises(ValueError, match="texts differ"):
        align_batch(two, make_batch(b, ["x", "q"]))
    with pytest.raises(TypeError, match="source must be a stitch.batch.Batch, got list"):
        align_batch(["x"], two)


def test_corpus_summary_against_direct_counts():
    from analyses.alignment import AlignmentSummary, alignment_summary

    src, tgt = load("byte_level_bpe"), load("sentencepiece_unigram")
    texts = [PARAGRAPH, TRICKY[3], TRICKY[4]]
    summary = alignment_summary(texts, src, tgt)
    n_src = n_tgt = shared = none = repeat = 0
    hist: dict[int, int] = {}
    for text in texts:
        al = TokenAlignment.build(text, src, tgt)
        s_text = [not sp for sp in al.source_special.tolist()]
        n_src, n_tgt, shared = (
            n_src + sum(s_text),
            n_tgt + int((~al.target_special).sum()),
            shared + len(al.shared_boundaries),
        )
        last = 0
        for j, i in enumerate(al.target_to_source.tolist()):
            if al.target_special[j]:
                continue
            done = sum(s_text[: i + 1])  # source text tokens finished by target token j
            hist[done - last] = hist.get(done - last, 0) + 1
            none += done == 0
            repeat += done == last and done > 0
            last = done
    assert (summary.n_source_tokens, summary.n_target_tokens, summary.shared_boundaries) == (
        n_src,
        n_tgt,
        shared,
    )
    assert summary.source_tokens_per_char == pytest.approx(n_src / sum(map(len, texts)))
    assert summary.no_source_fraction == pytest.approx(none / n_tgt)
    assert summary.repeated_source_fraction == pytest.approx(repeat / n_tgt)
    assert summary.source_per_target_hist == tuple(hist.get(k, 0) for k in range(max(hist) + 1))
    assert AlignmentSummary.from_dict(summary.to_dict()) == summary


def test_corpus_summary_of_one_tokenizer_is_trivial():
    from analyses.alignment import alignment_summary

    tok = load("byte_level_bpe")
    s = alignment_summary([PARAGRAPH, "Hi"], tok, _copy(tok))
    assert s.source_per_target == s.shared_fraction_target == s.shared_fraction_source == 1.0
    assert s.no_source_fraction == s.repeated_source_fraction == 0.0
    assert s.source_per_target_hist == (0, s.n_target_tokens)
    with pytest.raises(ValueError, match="texts: expected a non-empty list"):
        alignment_summary([], tok, tok)
    with pytest.raises(TypeError, match=r"^texts\[1\]: expected a string, got int"):
        alignment_summary(["Hi", 3], tok, tok)
    with pytest.raises(ValueError, match=r"^texts\[0\]: empty string"):
        alignment_summary([""], tok, tok)


def test_alignment_map_draws_every_token_and_link():
    import plotly.graph_objects as go

    from analyses.figures.alignment import _BOX, _ROW_GAP, alignment_map, fan_in_histogram

    al = TokenAlignment.build(PARAGRAPH, load("llama3"), load("mistral"))
    fig = alignment_map(al, "Llama-3", "Mistral", chars_per_line=60)
    assert isinstance(fig, go.Figure)
    hovers = {h.split(":")[0] for t in fig.data if t.mode == "text" for h in t.hovertext}
    assert hovers == {f"Llama-3 token {k}" for k in range(len(al.source_ids))} | {
        f"Mistral token {k}" for k in range(len(al.target_ids))
    }
    links = next(t for t in fig.data if (t.name or "").startswith("target ← source"))
    assert list(links.x).count(None) == int((al.target_to_source >= 0).sum())
    bars = next(t for t in fig.data if t.name == "shared boundary")
    assert list(bars.x).count(None) == len(al.shared_boundaries)
    gap = _ROW_GAP - _BOX  # links and bars stay in the gap of one wrapped line: none cuts across boxes
    for trace in (links, bars):
        ys = [y for y in trace.y if y is not None]
        spans = [abs(a - b) for a, b in zip(ys[0::2], ys[1::2], strict=True)]
        assert spans == pytest.approx([gap] * len(spans))
    reads = [h for t in fig.data if t.mode == "text" for h in t.hovertext if h.startswith("Mistral token 5:")]
    assert f"reads source token {al.target_to_source[5].item()}:" in reads[0]
    with pytest.raises(TypeError, match="al: expected a stitch.TokenAlignment"):
        alignment_map("text")
    with pytest.raises(ValueError, match="chars_per_line: expected a positive integer, got 0"):
        alignment_map(al, chars_per_line=0)
    from analyses.alignment import alignment_summary

    summary = alignment_summary([PARAGRAPH], load("llama3"), load("mistral"))
    bars = fan_in_histogram(summary).data[0]
    assert sum(bars.y) == summary.n_target_tokens and sum(bars.customdata) == pytest.approx(100)  # % on hover
