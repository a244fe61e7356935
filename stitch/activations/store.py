"""An activation store: per text, both tokenizations, their pairing, A's states at some layers and B's targets.

    >>> store = collect_activations(A, B, texts, source_layers=[8], target_layers=[8], path="runs/cache")
    >>> store = open_store("runs/cache", expect=store_identity(A, B, texts, [8], [8]))   # refused if stale
    >>> batch = store.batch([0, 3, 5])          # a StoredBatch: .pairing, .source[8], .target[8], .logits
    >>> x, y = store.paired(8, 8)               # every pair's A and B states: fits, CKA

Rows are kept unpadded and padded again per batch (right padding, exactly what `pair_texts` builds), so a
batch read from the store is the batch the models would have been run on. On disk: `shard-XXXXX.safetensors`
files (each key of its rows concatenated, with the rows' lengths) and `manifest.json`, written last and
atomically (`stitch.files`): the models (name, revision, config and weight fingerprints), the layers, the
pairing, the SHA-256 of the texts and of every shard. A store whose manifest does not match what a run needs,
or whose shards do not match their digests, is refused with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor

from stitch.alignment.pairing import Pairing
from stitch.batch import Batch, positions_from_mask
from stitch.files import write_atomic
from stitch.losses import IGNORE

FORMAT = "stitch.activations/1"
MANIFEST = "manifest.json"
# the value a key is padded with, by its name's first part (states and logits pad with 0)
_PAD = {"spans": -1, "byte_spans": -1, "special_mask": True, "target_to_source": -1, "source_labels": IGNORE,
        "source_next": -1}  # fmt: skip


class StaleStoreError(ValueError):
    """The store was built for other models, layers, texts or pairing, or its files changed."""


@dataclass
class StoredBatch:
    """A padded batch from a store: the pairing, A's states by layer, B's states by layer, B's logits."""

    pairing: Pairing
    source: dict[int, Tensor] = field(default_factory=dict)
    target: dict[int, Tensor] = field(default_factory=dict)
    logits: Tensor | None = None


class ActivationStore:
    """Rows of stored tensors and the manifest that says what they are (memory or on disk)."""

    def __init__(self, manifest: dict[str, Any], rows: list[dict[str, Tensor]], texts: list[str], path=None):
        self.manifest, self._rows, self.texts, self.path = manifest, rows, texts, path

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        where = self.path or "memory"
        m = self.manifest
        return f"ActivationStore({where}, {len(self)} texts, A layers {m['source_layers']}, B layers {m['target_layers']})"

    def check(self, expected: dict[str, Any]) -> None:
        """Raise `StaleStoreError` naming the first difference from what a run needs (`store_identity`)."""
        reason = mismatch(self.manifest, expected)
        if reason:
            raise StaleStoreError(
                f"activation store {self.path or '(memory)'}: {reason}; build a new store (delete the "
                "directory, or give another cache path)"
            )

    def batch(self, indices, device=None, target_device=None) -> StoredBatch:
        """The rows at `indices`, padded on the right as `pair_texts` pads them, on `device` (B's side on
        `target_device` when given: A and B on two devices)."""
        rows = [self._rows[i] for i in indices]
        texts = [self.texts[i] for i in indices]
        pad = self.manifest["pad_ids"]
        stamps = {side: self.manifest[f"{side}_model"].get("tokenizer") for side in ("source", "target")}
        source = _batch(rows, "source", texts, pad["source"], stamps["source"])
        identical = self.manifest["pairing"]["identical"]
        target = source if identical else _batch(rows, "target", texts, pad["target"], stamps["target"])
        t2s = None if identical else _stack(rows, "target_to_source")
        pairing = Pairing(source, target, t2s, _stack(rows, "source_labels"), _stack(rows, "source_next"))
        stored = StoredBatch(
            pairing,
            {n: _stack(rows, f"A.{n}") for n in self.manifest["source_layers"]},
            {m: _stack(rows, f"B.{m}") for m in self.manifest["target_layers"]},
            _stack(rows, "B.logits") if self.manifest["native_logits"] else None,
        )
        if device is None and target_device is None:
            return stored
        return _to(stored, device, device if target_device is None else target_device)

    def paired(self, source_layer: int, target_layer: int, classes=None, drop_special: bool = True,
               batch_size: int = 64) -> tuple[Tensor, Tensor]:  # fmt: skip
        """(x [n, d_source], y [n, d_target]): A's and B's states at every pair of the pairing, all texts."""
        xs, ys = [], []
        for start in range(0, len(self), batch_size):
            stored = self.batch(range(start, min(start + batch_size, len(self))))
            rows, src, tgt = stored.pairing.pairs(drop_special, classes)
            xs.append(stored.source[source_layer][rows, src])
            ys.append(stored.target[target_layer][rows, tgt])
        return torch.cat(xs), torch.cat(ys)


def mismatch(manifest: dict[str, Any], expected: dict[str, Any]) -> str:
    """Why a store with `manifest` cannot serve `expected` ("" when it can)."""
    if manifest.get("format") != FORMAT:
        return f"format {manifest.get('format')!r}, expected {FORMAT!r}"
    for key in ("source_model", "target_model"):
        for part, value in expected[key].items():
            if manifest[key].get(part) != value:
                return f"{key} {part}: stored {manifest[key].get(part)!r}, the run has {value!r}"
    if manifest["texts_sha256"] != expected["texts_sha256"]:
        return f"built on other texts (SHA-256 {manifest['texts_sha256'][:12]}…, the run's {expected['texts_sha256'][:12]}…)"
    for key in ("source_layers", "target_layers"):
        missing = sorted(set(expected[key]) - set(manifest[key]))
        if missing:
            return f"{key}: {missing} not stored (stored: {manifest[key]})"
    if expected.get("native_logits") and not manifest["native_logits"]:
        return "B's native logits are needed (a kl objective) but were not stored"
    if manifest["pairing"] != expected["pairing"]:
        return f"pairing {manifest['pairing']}, the run needs {expected['pairing']}"
    return ""


def store_identity(A, B, texts, source_layers, target_layers=(), native_logits=False) -> dict[str, Any]:
    """What a store must have been built from to serve a run on `texts` with these layers."""
    return {
        "source_model": model_identity(A),
        "target_model": model_identity(B),
        "texts_sha256": texts_sha256(texts),
        "source_layers": sorted(set(source_layers)),
        "target_layers": sorted(set(target_layers)),
        "native_logits": bool(native_logits),
        "pairing": {"padding_side": "right", "identical": A.tokenizer is B.tokenizer},
    }


def texts_sha256(texts) -> str:
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()


def model_identity(model) -> dict[str, Any]:
    """Name, revision, and fingerprints of the config and of the weights (each parameter's first values)."""
    config = model.model.config
    weights = hashlib.sha256()
    for name, p in model.model.named_parameters():
        head = p.detach().flatten()[:1024].float().cpu()
        weights.update(f"{name}{tuple(p.shape)}{p.dtype}".encode() + head.numpy().tobytes())
    return {
        "name": model.name,
        "revision": getattr(config, "_commit_hash", None),
        "config_sha256": hashlib.sha256(config.to_json_string(use_diff=False).encode()).hexdigest(),
        "weights_sha256": weights.hexdigest(),
        "tokenizer": model.tokenizer_fingerprint,
    }


def write_shard(directory: Path, index: int, rows: list[dict[str, Tensor]]) -> dict[str, Any]:
    """Write rows as one safetensors shard; returns its manifest entry (file, row count, SHA-256)."""
    tensors = {key: torch.cat([row[key] for row in rows]).contiguous() for key in rows[0]}
    for side in ("source", "target"):
        tensors[f"lengths.{side}"] = torch.tensor([_length(row, side) for row in rows], dtype=torch.long)
    data = safetensors.torch.save(tensors)
    name = f"shard-{index:05d}.safetensors"
    write_atomic(directory / name, data)
    return {"file": name, "rows": len(rows), "sha256": hashlib.sha256(data).hexdigest()}


def write_manifest(directory: Path, manifest: dict[str, Any], texts: list[str]) -> None:
    write_atomic(directory / "texts.json", json.dumps(texts))
    write_atomic(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def open_store(path: str | os.PathLike, expect: dict[str, Any] | None = None) -> ActivationStore:
    """The store at `path`, its shards verified against the manifest, and checked against `expect`."""
    directory = Path(path)
    if not (directory / MANIFEST).is_file():
        raise StaleStoreError(
            f"activation store {directory}: no {MANIFEST} (not a store, or an unfinished one)"
        )
    manifest = json.loads((directory / MANIFEST).read_text())
    store = ActivationStore(manifest, [], [], directory)
    if expect is not None:
        store.check(expect)
    texts = json.loads((directory / "texts.json").read_text())
    if texts_sha256(texts) != manifest["texts_sha256"]:
        raise StaleStoreError(
            f"activation store {directory}: texts.json does not match the manifest's SHA-256"
        )
    for entry in manifest["shards"]:
        store._rows.extend(_read_shard(directory, entry))
    store.texts = texts
    return store


def _read_shard(directory: Path, entry: dict[str, Any]) -> list[dict[str, Tensor]]:
    file = directory / entry["file"]
    data = file.read_bytes() if file.is_file() else b""
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise StaleStoreError(
            f"activation store {directory}: {entry['file']} is missing or changed since it was written"
        )
    tensors = safetensors.torch.load(data)
    lengths = {side: tensors.pop(f"lengths.{side}").tolist() for side in ("source", "target")}
    starts = {side: [sum(lengths[side][:i]) for i in range(len(lengths[side]))] for side in lengths}
    return [
        {
            key: t[starts[_side(key)][i] : starts[_side(key)][i] + lengths[_side(key)][i]]
            for key, t in tensors.items()
        }
        for i in range(entry["rows"])
    ]


def unpad(pairing: Pairing, source: dict, target: dict, logits: Tensor | None) -> list[dict[str, Tensor]]:
    """One row per text of a right-padded batch: only its real positions, on the CPU."""
    rows = []
    lengths_s, lengths_t = pairing.source.lengths().tolist(), pairing.target.lengths().tolist()
    for i, (ns, nt) in enumerate(zip(lengths_s, lengths_t, strict=True)):
        row = {f"source.{k}": v[i, :ns] for k, v in _fields(pairing.source).items()}
        if not pairing.identical:
            row.update({f"target.{k}": v[i, :nt] for k, v in _fields(pairing.target).items()})
            row["target_to_source"] = pairing.target_to_source[i, :nt]
        row["source_labels"], row["source_next"] = pairing.source_labels[i, :ns], pairing.source_next[i, :ns]
        row.update({f"A.{n}": s[i, :ns] for n, s in source.items()})
        row.update({f"B.{m}": s[i, :nt] for m, s in target.items()})
        if logits is not None:
            row["B.logits"] = logits[i, :nt]
        rows.append({k: v.detach().cpu().contiguous() for k, v in row.items()})
    return rows


def _fields(batch: Batch) -> dict[str, Tensor]:
    return {k: v for k, v in batch.tensors().items() if k not in ("attention_mask", "position_ids")}


def _side(key: str) -> str:
    """Which tokenization a stored key runs along."""
    if key.startswith(("source.", "A.")) or key in ("source_labels", "source_next"):
        return "source"
    return "target"


def _length(row: dict[str, Tensor], side: str) -> int:
    key = next((k for k in row if _side(k) == side), None)
    return 0 if key is None else row[key].shape[0]


def _stack(rows: list[dict[str, Tensor]], key: str) -> Tensor:
    width = max(row[key].shape[0] for row in rows)
    first = rows[0][key]
    value = _PAD.get(key.split(".")[-1], 0)
    out = torch.full((len(rows), width, *first.shape[1:]), value, dtype=first.dtype)
    for i, row in enumerate(rows):
        out[i, : row[key].shape[0]] = row[key]
    return out


def _batch(rows, side: str, texts: list[str], pad_id: int, fingerprint: str | None) -> Batch:
    # the target of an identical pairing is the source: its rows hold source keys only
    ids = _stack(rows, f"{side}.input_ids")
    lengths = torch.tensor([row[f"{side}.input_ids"].shape[0] for row in rows])
    mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
    ids = torch.where(mask.bool(), ids, pad_id)
    byte_key = f"{side}.byte_spans"
    byte_spans = _stack(rows, byte_key) if byte_key in rows[0] else None
    spans, special = _stack(rows, f"{side}.spans"), _stack(rows, f"{side}.special_mask")
    return Batch(texts, ids, mask, positions_from_mask(mask), spans, special, "right", byte_spans, fingerprint)


def _to(stored: StoredBatch, source_device, target_device) -> StoredBatch:
    """Placed as `pair_texts` and the live path place them: A's batch and states on A's side, B's batch,
    the pairing's index tensors, B's states and logits on B's side (two devices when A and B differ)."""
    p = stored.pairing
    source = p.source.to(source_device)
    target = p.target.to(target_device)  # a shared tokenization still crosses: B reads its ids on its device
    move = lambda t: None if t is None else t.to(target_device)  # noqa: E731
    pairing = Pairing(source, target, move(p.target_to_source), move(p.source_labels), move(p.source_next))
    return StoredBatch(
        pairing,
        {k: v.to(source_device) for k, v in stored.source.items()},
        {k: v.to(target_device) for k, v in stored.target.items()},
        move(stored.logits),
    )
