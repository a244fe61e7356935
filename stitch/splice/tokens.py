"""Token-level generation state: B's ids are the truth, A's text and tokens are derived from them.

    >>> row = TextRow.start(B.tokenizer, prompt, prompt_byte_ends, prompt_special)
    >>> row.append(token_id)                      # B's new token; A's text grows by its bytes, once
    >>> tail = TailTokenizer(A.tokenizer, row.text)
    >>> first_changed = tail.extend(row.text)     # A's tokens re-tokenized only where they can still change

Text. Each B token stands for the UTF-8 bytes of its surface (byte-level BPE: the GPT-2 byte alphabet;
sentencepiece style: `▁` is a space, `<0xE2>` one byte); special tokens stand for nothing. Decoding
`[▁of, ▁the]` on its own would drop the leading space; reading surfaces never does. The bytes feed an
incremental UTF-8 decoder, so a character cut into byte tokens enters A's text only once it is complete, and a
byte that can never be valid UTF-8 enters as U+FFFD. Positions on both sides are byte offsets in that text:
B token j "ends" where the text stood right after its bytes, which is causal (A never reads a byte B has not).

The tail rule (A's incremental tokenization). Appending text can only change A's last tokens: a tokenizer's
pre-tokenizer cuts text at spaces and punctuation, and a token never spans such a cut. So A keeps all its
tokens before a window of its last `window` text tokens and re-tokenizes the text from the window's start;
it accepts the result when the window's first token comes out unchanged (same id, same bytes), which shows the
window starts at a boundary the new text did not move. Otherwise the window doubles, up to a full re-encoding.
A tokenizer that appends a special token at the end re-encodes in full. `tests/test_generation_tokens.py`
checks the rule against full re-encoding on random appends, byte-level BPE and sentencepiece style.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

from stitch.alignment.spans import token_spans
from stitch.alignment.surface import special_ids, surfaces


def token_bytes(tokenizer, token_id: int, special: frozenset | None = None) -> bytes:
    """The bytes a generated token adds to the text: its surface, nothing for a special token (`special`:
    the tokenizer's `special_ids`, when the caller has them)."""
    table = surfaces(tokenizer)
    if token_id in table.special_ids or token_id in (special_ids(tokenizer) if special is None else special):
        return b""
    if table.kind is not None and table.lengths[token_id] >= 0:
        return table.bytes[token_id]
    # No surface table (WordPiece and the like): the token's own decoding, spacing as the decoder gives it.
    return tokenizer.decode([token_id]).encode("utf-8")


@dataclass
class TextRow:
    """One prompt's growing text: B's ids, where each B token ends in the text (bytes), and the text itself."""

    tokenizer: object
    ids: list[int]
    ends: list[int]  # byte offset in `text` right after each B token
    special: list[bool]
    text: str
    n_bytes: int
    prompt_len: int  # B tokens in the prompt
    prompt_chars: int
    _decoder: object = field(repr=False, default=None)
    _special_ids: frozenset | None = field(repr=False, default=None)

    @classmethod
    def start(cls, tokenizer, prompt: str, ids, byte_ends, special) -> TextRow:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        n = len(prompt.encode("utf-8"))
        return cls(tokenizer, list(ids), list(byte_ends), list(special), prompt, n, len(ids), len(prompt), decoder)

    def append(self, token_id: int) -> None:
        """Add B's token; its bytes extend the text once they complete a character."""
        if self._special_ids is None:  # read once per row: the tokenizer's special ids do not change mid-run
            self._special_ids = special_ids(self.tokenizer)
        new = self._decoder.decode(token_bytes(self.tokenizer, token_id, self._special_ids))
        self.text += new
        self.n_bytes += len(new.encode("utf-8"))
        self.ids.append(token_id)
        self.ends.append(self.n_bytes)
        self.special.append(token_id in self._special_ids)

    @property
    def continuation(self) -> str:
        """The generated text so far (complete characters only)."""
        return self.text[self.prompt_chars :]

    def final_text(self) -> str:
        """The continuation with any unfinished character's bytes flushed as U+FFFD (the row is not changed)."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        decoder.setstate(self._decoder.getstate())
        return self.continuation + decoder.decode(b"", final=True)

    def generated_ids(self) -> list[int]:
        return self.ids[self.prompt_len :]


class TailTokenizer:
    """A's tokenization of a growing text (ids, byte ends, special flags), kept equal to a full re-encoding."""

    def __init__(self, tokenizer, text: str, window: int = 4):
        self.tokenizer, self.window = tokenizer, window
        self._set(token_spans(tokenizer, text), text)

    def _set(self, ts, text: str) -> None:
        self.ids = list(ts.ids)
        self.ends = [e for _, e in ts.byte_spans]
        self.starts = [s for s, _ in ts.byte_spans]
        self.special = list(ts.special)
        self.text, self.data = text, text.encode("utf-8")
        # Leading special tokens (BOS) stay; one after them (an appended EOS) forces a full re-encoding.
        self._lead = next((i for i, s in enumerate(self.special) if not s), len(self.ids))
        self._special_after_lead = any(self.special[self._lead :])

    def extend(self, text: str) -> int:
        """Re-tokenize after the text grew to `text`; the index of A's first token that changed (len if none)."""
        if text == self.text:
            return len(self.ids)
        lead = self._lead
        if self._special_after_lead:
            return self._reencode(text)
        c0 = self._extend_tail(text, lead)
        return self._reencode(text) if c0 is None else c0

    def _reencode(self, text: str) -> int:
        old = list(zip(self.ids, self.ends, strict=True))
        self._set(token_spans(self.tokenizer, text), text)
        new = list(zip(self.ids, self.ends, strict=True))
        return next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new)))

    def _extend_tail(self, text: str, lead: int) -> int | None:
        """Re-tokenize from a window's start; the first changed token index, None when no window fits."""
        data = text.encode("utf-8")
        width = self.window
        while len(self.ids) - width > lead:
            c0 = len(self.ids) - width
            start = self.starts[c0]
            window = _decode_from(data, start)
            if window is not None:
                changed = self._accept(window, c0, start, text, data)
                if changed is not None:
                    return changed
            width *= 2
        return None

    def _accept(self, window: str, c0: int, start: int, text: str, data: bytes) -> int | None:
        ts = token_spans(self.tokenizer, window, add_special_tokens=False)
        if not ts.ids or ts.ids[0] != self.ids[c0] or ts.byte_spans[0][1] + start != self.ends[c0]:
            return None
        ends = [e + start for _, e in ts.byte_spans]
        old = list(zip(self.ids[c0:], self.ends[c0:], strict=True))
        changed = next((c0 + i for i, (a, b) in enumerate(zip(old, zip(ts.ids, ends, strict=True), strict=False))
                        if a != b), c0 + min(len(old), len(ts.ids)))
        self.ids[c0:] = ts.ids
        self.starts[c0:] = [s + start for s, _ in ts.byte_spans]
        self.ends[c0:] = ends
        self.special[c0:] = ts.special
        self._special_after_lead = any(ts.special)
        self.text, self.data = text, data
        return changed


def _decode_from(data: bytes, start: int) -> str | None:
    """`data[start:]` as text, or None when `start` falls inside a character."""
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError:
        return None
