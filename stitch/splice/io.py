"""Whole splices on disk: the adapter (safetensors, never pickle), layers, alignment, injection, positions,
and the identities of both models, so a splice reloads without re-typing anything.

    >>> sp.save_pretrained("runs/l16")                    # runs/l16/splice.json + adapter.safetensors
    >>> sp = stitch.Splice.from_pretrained("runs/l16")    # reloads A and B from their recorded paths
    >>> sp = stitch.Splice.from_pretrained("runs/l16", A=A, B=B)   # given models are checked, not trusted
    >>> sp.push_to_hub("user/llama-to-mistral-l16"); stitch.Splice.from_pretrained("user/llama-to-mistral-l16")

A model's identity is its hub id or absolute path, revision, a hash of its HF config (minus bookkeeping
keys), a hash of its tokenizer's vocabulary, its family and shape, and a fingerprint of a few weights
(rounded to bfloat16, so loading in another dtype still matches). A given model whose identity differs
from the saved one is refused with the differing fields.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from stitch.adapters.io import library_versions, load_adapter, save_adapter
from stitch.files import write_atomic
from stitch.models.arch import get_module
from stitch.models.hooked import HookedLM
from stitch.models.loading import load_model

FORMAT, FORMAT_VERSION, CONFIG_NAME = "stitch-splice", 1, "splice.json"
_CHECKED = ("family", "n_layers", "d_model", "vocab_size", "config_hash", "tokenizer_hash", "weights_fingerprint")
_VOLATILE = ("transformers_version", "dtype", "torch_dtype", "use_cache", "architectures")


def save_splice(splice, directory: str | os.PathLike) -> Path:
    """Write `splice` to `directory` (created): `splice.json` and the adapter; returns the directory."""
    directory = Path(directory)
    if directory.is_file():
        raise ValueError(f"directory: {str(directory)!r} is a file; save_pretrained writes a directory")
    layers = {"source_layer": splice.source_layer, "target_layer": splice.target_layer}
    save_adapter(splice.adapter, directory, **layers, source_model=splice.A.name, target_model=splice.B.name)
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **layers,
        "alignment": splice.alignment,
        "injection": splice.injection,
        "padding_side": splice.padding_side,
        "positions": _positions(splice.positions),
        "combine": splice.combine.name,
        "models": {"A": model_identity(splice.A), "B": model_identity(splice.B)},
        "versions": library_versions(),
    }
    write_atomic(directory / CONFIG_NAME, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return directory


def read_splice(source: str | os.PathLike, A=None, B=None, *, dtype=None, device=None, revision=None):
    """(A, B, keyword arguments of `Splice`) for the splice saved at `source` (a directory or a hub repo)."""
    directory = resolve_directory(source, revision)
    record = read_record(directory)
    models = []
    for key, given in (("A", A), ("B", B)):
        identity = record["models"][key]
        model = given if given is not None else _reload(key, identity, dtype, device)
        check_identity(key, model, identity)
        models.append(model)
    adapter = load_adapter(directory)  # on the CPU: the Splice places it once, on B's side
    names = ("source_layer", "target_layer", "alignment", "injection", "padding_side", "positions", "combine")
    kwargs = {k: record[k] for k in names if k in record}
    return models[0], models[1], {**kwargs, "adapter": adapter}


def read_record(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no saved splice at {str(directory)!r} (expected {path})")
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("format") != FORMAT or record.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format {record.get('format')!r} version {record.get('format_version')} is not "
            f"readable here (expected {FORMAT!r} <= {FORMAT_VERSION}); upgrade stitch"
        )
    return record


def resolve_directory(source: str | os.PathLike, revision: str | None = None) -> Path:
    """A local directory as is; anything else is a hub repo id, downloaded (or read from the cache)."""
    if Path(source).is_dir():
        return Path(source)
    if Path(source).exists():
        raise ValueError(f"source: {str(source)!r} is a file; a saved splice is a directory or a hub repo id")
    try:
        import huggingface_hub
    except ImportError:
        raise ValueError(
            f"source: no directory at {str(source)!r}, and huggingface_hub is not installed to read it from the hub"
        ) from None
    return Path(huggingface_hub.snapshot_download(repo_id=str(source), revision=revision))


def push_splice(splice, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload stitch splice") -> str:
    """Save `splice` and upload it as the hub repo `repo_id` (created if needed); returns the repo id."""
    try:
        import huggingface_hub
    except ImportError:
        raise ValueError("push_to_hub: needs huggingface_hub (pip install huggingface_hub)") from None
    api = huggingface_hub.HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_splice(splice, tmp)
        api.upload_folder(folder_path=tmp, repo_id=repo_id, commit_message=commit_message)
    return repo_id


def model_identity(model: HookedLM) -> dict[str, Any]:
    """What identifies a model for a saved splice (see the module docstring)."""
    config = model.model.config
    path = getattr(config, "_name_or_path", "") or model.name
    local = bool(path) and os.path.isdir(path)
    return {
        "name_or_path": os.path.abspath(path) if local else (path or None),
        "revision": None if local else getattr(config, "_commit_hash", None),
        "family": model.spec.family,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "vocab_size": model.vocab_size,
        "config_hash": config_hash(config),
        "tokenizer_hash": tokenizer_hash(model.tokenizer),
        "weights_fingerprint": weights_fingerprint(model),
    }


def config_hash(config) -> str:
    data = {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k not in _VOLATILE}
    return _sha(json.dumps(data, sort_keys=True, default=str))


def tokenizer_hash(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return _sha(json.dumps([vocab, tokenizer.all_special_tokens], default=str))


@torch.no_grad()
def weights_fingerprint(model: HookedLM) -> str:
    """A hash of a few weights (first embedding rows, the final norm), rounded to bfloat16."""
    embed = get_module(model.model, model.spec.embed).weight[:4]
    norm = getattr(get_module(model.model, model.spec.final_norm), "weight", None)
    parts = [embed] + ([] if norm is None else [norm])
    data = b"".join(p.detach().to("cpu", torch.bfloat16).float().numpy().tobytes() for p in parts)
    return _sha(data)


def check_identity(key: str, model: HookedLM, saved: dict[str, Any]) -> None:
    """Refuse a model that is not the one the splice was saved with, naming every differing field."""
    if not isinstance(model, HookedLM):
        raise TypeError(f"{key}: expected a stitch.HookedLM (use stitch.load_model), got {type(model).__name__}")
    found = model_identity(model)
    diffs = [f"{k}: saved {saved.get(k)!r}, given {found[k]!r}" for k in _CHECKED if saved.get(k) != found[k]]
    if diffs:
        raise ValueError(
            f"{key}: model {model.name!r} is not the model this splice was saved with "
            f"({saved.get('name_or_path')!r}): " + "; ".join(diffs)
        )


def _reload(key: str, identity: dict[str, Any], dtype, device) -> HookedLM:
    path = identity.get("name_or_path")
    if not path:
        raise ValueError(
            f"{key}: the splice was saved from an in-memory model with no path or hub id; pass {key}=..."
        )
    revision = {} if identity.get("revision") is None else {"revision": identity["revision"]}
    return load_model(path, dtype=dtype, device=device, **revision)


def _positions(positions) -> str | list[int]:
    """A position selection as JSON: its name, or its token indices; a user mask fits one batch only."""
    if isinstance(positions.key, str):
        return positions.key
    if isinstance(positions.key, tuple) and all(isinstance(i, int) for i in positions.key):
        return list(positions.key)
    raise ValueError(
        f"positions: a {positions.label!r} selection fits one batch of texts and cannot be saved; "
        "use a named selection or token indices"
    )


def _sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:16]
