"""Training texts: local text or JSONL files, Hugging Face datasets by name, and chunking or packing by tokens.

    >>> texts = load_texts("train.txt")                                  # one text per line
    >>> texts = load_texts("train.jsonl", text_field="body")            # {"body": ...} per line
    >>> texts = load_texts("hf:wikitext:wikitext-2-raw-v1", split="train", limit=10_000)  # needs `datasets`
    >>> chunks = chunk_texts(texts, A, max_tokens=512, stride=64)       # long texts cut, 64 tokens overlap
    >>> packed = pack_texts(texts, A, max_tokens=512)                   # short texts joined up to 512

Chunks are cut at A's token boundaries (character spans from A's tokenizer, `stitch.alignment.spans`), so a chunk re-tokenizes to about
`max_tokens` tokens (a boundary can merge differently once cut). `name` in errors is the option that gave the
value (`--texts` on the command line).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from stitch.alignment.spans import token_spans_batch
from stitch.texts import read_texts

HF_PREFIX = "hf:"


def load_texts(source: str, text_field: str = "text", split: str = "train", limit: int | None = None,
               name: str = "texts") -> list[str]:  # fmt: skip
    """A local file (`read_texts`), or `hf:DATASET[:CONFIG]` through `datasets.load_dataset` when installed."""
    if not str(source).startswith(HF_PREFIX):
        texts = read_texts(source, text_field, name)
    else:
        texts = _hub_texts(str(source)[len(HF_PREFIX) :], text_field, split, limit, name)
    return texts if limit is None else texts[:limit]


def _hub_texts(spec: str, field: str, split: str, limit: int | None, name: str) -> list[str]:
    try:
        datasets = importlib.import_module("datasets")
    except ImportError:
        raise ImportError(
            f"{name}: {HF_PREFIX}{spec} needs the `datasets` package; pip install datasets"
        ) from None
    dataset_name, _, config = spec.partition(":")
    try:
        data = datasets.load_dataset(dataset_name, config or None, split=split, streaming=limit is not None)
    except Exception as err:  # offline, unknown name, unknown split: one message naming the option
        raise ValueError(f"{name}: could not load {HF_PREFIX}{spec} (split {split!r}): {err}") from err
    texts = []
    for row in data:
        if field not in row:
            raise ValueError(f"{name}: {HF_PREFIX}{spec} has no field {field!r}; its fields: {sorted(row)}")
        if isinstance(row[field], str) and row[field].strip():
            texts.append(row[field])
        if limit is not None and len(texts) >= limit:
            break
    return texts


def chunk_texts(texts: Sequence[str], model, max_tokens: int, stride: int = 0) -> list[str]:
    """Each text cut into windows of at most `max_tokens` of `model`'s tokens, consecutive windows sharing
    `stride` tokens; texts that fit are kept whole."""
    _check_window(max_tokens, stride)
    out = []
    for text in texts:
        spans = _token_spans(model, text)
        if len(spans) <= max_tokens:
            out.append(text)
            continue
        step = max_tokens - stride
        for start in range(0, len(spans), step):
            window = spans[start : start + max_tokens]
            out.append(text[window[0][0] : window[-1][1]])
            if start + max_tokens >= len(spans):
                break
    return out


def pack_texts(texts: Sequence[str], model, max_tokens: int, separator: str = "\n\n") -> list[str]:
    """Consecutive texts joined with `separator` while their tokens add up to at most `max_tokens` (longer
    texts are chunked first), so short texts do not waste a batch's padding."""
    _check_window(max_tokens, 0)
    packed, current, used = [], [], 0
    for text in chunk_texts(texts, model, max_tokens):
        n = len(_token_spans(model, text))
        if current and used + n > max_tokens:
            packed.append(separator.join(current))
            current, used = [], 0
        current.append(text)
        used += n
    if current:
        packed.append(separator.join(current))
    return packed


def _token_spans(model, text: str) -> list[tuple[int, int]]:
    # the tokenizer alone: a text to be cut is longer than the model's context by design
    [enc] = token_spans_batch(model.tokenizer, [text], False)
    return [tuple(span) for span, special in zip(enc.spans, enc.special, strict=True) if not special]


def _check_window(max_tokens: int, stride: int) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens: expected an integer >= 1, got {max_tokens!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or not 0 <= stride < max_tokens:
        raise ValueError(f"stride: expected an integer in [0, max_tokens={max_tokens}), got {stride!r}")
