"""Pre-trained small models cached on disk, keyed by everything that decides them.

    >>> A, info = cached_model(spec, corpus)                  # trains once, then loads in a second
    >>> info["key"], info["held_out"]["ce_native"], info["built"]     # built: False when read from the cache
    >>> cache_root()                                           # $STITCH_CACHE_DIR, else $XDG_CACHE_HOME/stitch

The key is the SHA-256 of the spec, the corpus's own SHA-256 (its exact texts), `FORMAT` (bumped whenever
the training code changes what it computes) and the versions of torch, transformers and tokenizers (tokenizer
training and numerics may change with them): change any of these and the model is rebuilt; otherwise it is
read back. A model directory is written whole or not at all (`stitch.files.atomic_directory`), so a run killed
mid-write leaves nothing a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from importlib import metadata
from pathlib import Path

import torch

from stitch.corpus import Corpus
from stitch.files import atomic_directory, write_atomic
from stitch.models.hooked import HookedLM
from stitch.models.loading import load_model
from stitch.zoo.pretrain import ModelSpec, build_tokenizer, held_out_ce, pretrain

ENV = "STITCH_CACHE_DIR"
FORMAT = 1
LIBRARIES = ("torch", "transformers", "tokenizers")


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """Where models are cached: `override`, else $STITCH_CACHE_DIR, else $XDG_CACHE_HOME/stitch (~/.cache)."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "stitch"


def cache_key(spec: ModelSpec, corpus: Corpus) -> str:
    """The hex SHA-256 of everything that decides the model (see the module docstring)."""
    parts = {
        "format": FORMAT, "spec": spec.to_dict(), "corpus": corpus.sha256,
        "versions": {name: metadata.version(name) for name in LIBRARIES},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def model_dir(spec: ModelSpec, corpus: Corpus, root: str | os.PathLike | None = None) -> Path:
    return cache_root(root) / "models" / f"{spec.name}-{spec.family}-{cache_key(spec, corpus)[:16]}"


def cached_model(
    spec: ModelSpec, corpus: Corpus, root: str | os.PathLike | None = None, progress: bool = True
) -> tuple[HookedLM, dict]:
    """The model of `spec` trained on `corpus.train`: read from the cache, or trained and cached."""
    directory = model_dir(spec, corpus, root)
    built = not (directory / "info.json").is_file()
    if built:
        _build(spec, corpus, directory, progress)
    info = json.loads((directory / "info.json").read_text())
    model = load_model(str(directory), dtype=torch.float32, device="cpu", name=f"{spec.name} ({spec.family})")
    return model, {**info, "built": built, "path": str(directory)}


def _build(spec: ModelSpec, corpus: Corpus, directory: Path, progress: bool) -> None:
    start, cpu = time.perf_counter(), time.process_time()
    tokenizer = build_tokenizer(spec, corpus.train)
    model, history = pretrain(spec, tokenizer, corpus.train, progress=progress)
    info = {
        "spec": spec.to_dict(), "key": cache_key(spec, corpus), "corpus_sha256": corpus.sha256,
        "versions": {name: metadata.version(name) for name in LIBRARIES},
        "held_out": held_out_ce(model, tokenizer, corpus.train, corpus.held_out, spec.n_ctx),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "history": history, "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
    }
    with atomic_directory(directory) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_atomic(tmp / "info.json", json.dumps(info, indent=1))  # last: its presence marks a whole model
