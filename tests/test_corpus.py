"""The standard-library corpus: real English text, split by source, the same on every run."""

import hashlib

from stitch.corpus import pack, paragraphs, stdlib_corpus


def test_split_is_by_source_and_deterministic():
    corpus = stdlib_corpus()
    assert len(corpus.train) > 1000 and len(corpus.held_out) > 50
    train, held = set(corpus.sources_of("train")), set(corpus.sources_of("held_out"))
    assert train and held and not train & held  # no source on both sides
    assert any(s.startswith("topic:") for s in train) and any(s.startswith("module:") for s in train)
    digest = hashlib.sha256()
    for split, items in (("train", corpus.train_items), ("held_out", corpus.held_out_items)):
        for source, text in items:
            digest.update(f"{split}\0{source}\0{text}\0".encode())
    assert digest.hexdigest() == corpus.sha256
    assert all(0 < len(t) <= 600 for t in corpus.train + corpus.held_out)
    assert sum(" the " in t for t in corpus.held_out) > len(corpus.held_out) / 2  # English prose


def test_paragraphs_and_packing():
    assert paragraphs("a\nb\n\n\nc  \n") == ["a\nb", "c"]
    assert pack(["aa", "bb", "cc"], 6) == ["aa\n\nbb", "cc"]
    assert pack(["x" * 10], 4) == ["xxxx", "xxxx", "xx"]  # one very long line is cut hard
