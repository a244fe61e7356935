"""Tokenizers for the tests: trained on the fly (offline, < 1 s each) or the real Llama-3 / Mistral v0.3.

    >>> big, small = byte_level_bpe(2048), sentencepiece_unigram(512)   # 4x vocabulary ratio
    >>> llama3 = real_tokenizer("llama3")                              # None when PyPI is unreachable

The real tokenizer files ship inside PyPI wheels (`llama-models`: Llama-3's tiktoken file;
`mistral-common`: Mistral v0.3's sentencepiece model). They are fetched once with
`pip download --no-deps` into STITCH_TOKENIZER_CACHE (default ~/.cache/stitch-test-tokenizers),
read out of the wheel (a zip) and converted to Hugging Face fast tokenizers.
"""

from __future__ import annotations

import functools
import io
import os
import random
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("STITCH_TOKENIZER_CACHE", Path.home() / ".cache" / "stitch-test-tokenizers"))
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
WHEELS = {
    "llama3": ("llama-models", "llama_models/llama3/tokenizer.model"),
    "mistral": ("mistral-common", "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3"),
}
EXTRAS = [
    "日本語のテキストです。",
    "中文文本和标点，",
    "emoji 😀🎉👍🏽 ok",
    "café naïve résumé",
    "Привет, мир!",
    "    indented\tcode()\n",
    "x = [1, 2, 3]  # comment",
    "e\u0301 combining",
    "tab\tand\r\nnewline",
]


def corpus(n_lines: int = 2500, seed: int = 0) -> list[str]:
    """A deterministic mixed corpus: pseudo-English lines, numbers, code, CJK, emoji, accents."""
    rng = random.Random(seed)
    syllables = [a + b for a in "bcdfghklmnprstvwz" for b in "aeiou"] + ["th", "ing", "er", "qu", "str"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(1500)]
    lines = []
    for k in range(n_lines):
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14)))
        line = line.capitalize() + rng.choice([".", ",", "!", "?", ":", f" {rng.randint(0, 9999)}."])
        lines.append(line + (" " + rng.choice(EXTRAS) if k % 5 == 0 else ""))
    return lines


@functools.cache
def byte_level_bpe(vocab_size: int = 2048):
    """GPT-2-style byte-level BPE with a BOS token (fast tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|bos|>", "<|eos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", 0)]),
        ]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>")


@functools.cache
def sentencepiece_model(vocab_size: int = 512) -> bytes:
    """A sentencepiece Unigram model with byte fallback, trained on `corpus()` (serialized proto)."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=out,
        vocab_size=vocab_size,
        model_type="unigram",
        byte_fallback=True,
        character_coverage=0.9995,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        minloglevel=2,
    )
    return out.getvalue()


@functools.cache
def sentencepiece_unigram(vocab_size: int = 512, normalize: bool = False):
    """Fast tokenizer from `sentencepiece_model`: Unigram, `▁` spaces, `<0xNN>` byte fallback, BOS.

    normalize=True adds NFKC + lowercasing (the text the model sees differs from the original).
    """
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    sp = spm.SentencePieceProcessor(model_proto=sentencepiece_model(vocab_size))
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=True))
    if normalize:
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", sp.bos_id())])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@functools.cache
def sentencepiece_slow(vocab_size: int = 512):
    """The same sentencepiece model behind transformers' slow (no offsets) SentencePieceBackend."""
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    path = Path(tempfile.mkdtemp(prefix="stitch-spm-")) / f"unigram-{vocab_size}.model"
    path.write_bytes(sentencepiece_model(vocab_size))
    return SentencePieceBackend(vocab_file=str(path), bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@functools.cache
def wordpiece(vocab_size: int = 1000):
    """BERT-style WordPiece: lowercases, strips accents, drops whitespace, has [UNK], adds [CLS] ... [SEP]."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[UNK]", "[CLS]", "[SEP]"]
    tok.train_from_iterator(
        corpus(),
        trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def real_tokenizer(name: str):
    """'llama3', 'mistral' (fast, as transformers converts the .model file), 'mistral_legacy' (the hub
    tokenizer.json's Prepend/Replace normalizer) or 'mistral_slow' (sentencepiece, no offsets); None
    when the wheel cannot be fetched."""
    if name in _UNAVAILABLE:
        return None
    try:
        return _REAL[name]()
    except (OSError, subprocess.SubprocessError, zipfile.BadZipFile, KeyError) as err:
        print(f"real tokenizer {name!r} unavailable: {err}", file=sys.stderr)
        _UNAVAILABLE.add(name)  # ask PyPI once per session, not once per test
        return None


def _wheel_file(which: str) -> Path:
    """Extract the tokenizer file of `which` from its PyPI wheel (downloaded once) into CACHE."""
    package, member = WHEELS[which]
    target = CACHE / which / Path(member).name
    if target.exists():
        return target
    wheels = sorted(CACHE.glob(package.replace("-", "_") + "-*.whl"))
    if not wheels:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--retries",
                "1",
                "--timeout",
                "20",
                package,
                "-d",
                str(CACHE),
            ],
            check=True,
            timeout=300,
            capture_output=True,
        )
        wheels = sorted(CACHE.glob(package.replace("-", "_") + "-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as zf:
        data = zf.read(member)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)  # atomic: a concurrent session never reads half a file
    return target


@functools.cache
def _llama3():
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    cached = CACHE / "llama3" / "tokenizer.json"
    if not cached.exists():
        named = [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|reserved_special_token_0|>",
            "<|reserved_special_token_1|>",
            "<|finetune_right_pad_id|>",
            "<|step_id|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eom_id|>",
            "<|eot_id|>",
            "<|python_tag|>",
            "<|image|>",
        ]
        specials = named + [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(named))]
        tok = TikTokenConverter(
            vocab_file=str(_wheel_file("llama3")), pattern=LLAMA3_PATTERN, extra_special_tokens=specials
        ).converted()
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 128000)]
                ),
            ]
        )
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tok.save(str(tmp))
        tmp.replace(cached)
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(cached)),
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
    )


@functools.cache
def _mistral():
    from transformers import LlamaTokenizer

    path = _wheel_file("mistral")
    folder = path.parent / "hf"
    folder.mkdir(exist_ok=True)
    if not (folder / "tokenizer.model").exists():
        (folder / "tokenizer.model").write_bytes(path.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LlamaTokenizer.from_pretrained(str(folder), add_bos_token=True, local_files_only=True)


@functools.cache
def _mistral_legacy():
    from tokenizers import Tokenizer, normalizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_mistral().backend_tokenizer.to_str())
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@functools.cache
def _mistral_slow():
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    return SentencePieceBackend(
        vocab_file=str(_wheel_file("mistral")), bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


_UNAVAILABLE: set[str] = set()
_REAL = {
    "llama3": _llama3,
    "mistral": _mistral,
    "mistral_legacy": _mistral_legacy,
    "mistral_slow": _mistral_slow,
}
