"""`load_model`: a HookedLM from a hub id, a local directory, or an already-loaded HF model.

>>> A = stitch.load_model("meta-llama/Llama-3.1-8B", dtype=torch.bfloat16, device="cuda:0")
>>> B = stitch.load_model("mistralai/Mistral-7B-v0.3", dtype="auto", device_map="auto")  # sharded
>>> C = stitch.load_model("/models/mistral-7b-v0.3", revision="main", attn_implementation="sdpa")
>>> D = stitch.load_model(hf_model, tokenizer=tok)                 # loaded objects, no copy

Hub ids and directories load the way `AutoModelForCausalLM.from_pretrained` does, straight onto their
device: `device` becomes `device_map={"": device}` (never a CPU copy moved afterwards), `device_map` (e.g.
"auto", which shards over the GPUs with accelerate) is passed as is, and so is every other keyword
(`revision`, `attn_implementation`, `low_cpu_mem_usage`, `quantization_config`, ...). `dtype="auto"` keeps
the checkpoint's dtype (the default for hub ids; for a loaded model it leaves the weights as they are).

`requires_grad` flags are never changed: stitch's analysis calls run under `torch.no_grad()` themselves,
and a splice builds a graph only through the stream it injects, with the weights frozen for that call
alone (see `HookedLM`). Freeze a model yourself (`A.model.requires_grad_(False)`) if other code of yours
runs it with gradients on.
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn

from stitch.checks import check_device
from stitch.models.hooked import HookedLM
from stitch.models.interop import unwrap_model
from stitch.models.placement import is_sharded

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def load_model(
    model,
    tokenizer=None,
    *,
    dtype=None,
    device=None,
    device_map=None,
    name: str | None = None,
    trust_remote_code: bool = False,
    **from_pretrained_kwargs,
) -> HookedLM:
    """Wrap `model` (hub id, local directory, HF model, or a TransformerLens/nnsight wrapper of one).

    `from_pretrained_kwargs` (`revision`, `attn_implementation`, `low_cpu_mem_usage`, ...) go to
    `from_pretrained` (and `revision` / `trust_remote_code` to the tokenizer's too).
    """
    if device is not None and device_map is not None:
        raise ValueError(
            f"device, device_map: got both ({device!r}, {device_map!r}); pass device for one device or "
            "device_map to shard (device_map='auto' spreads the blocks over the available GPUs)"
        )
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    if isinstance(model, (str, os.PathLike)):
        placement = device_map if device_map is not None else None if device is None else {"": device}
        hf_model, tokenizer = _from_pretrained(
            str(model), tokenizer, dtype, placement, trust_remote_code, from_pretrained_kwargs
        )
        name = name or str(model)
    else:
        hf_model, tokenizer = _loaded(model, tokenizer, dtype, device, device_map, from_pretrained_kwargs)
    if tokenizer is None:
        raise ValueError(
            "tokenizer: required when `model` is a loaded module without one; pass tokenizer=..."
        )
    _check_weights_loaded(hf_model)
    return HookedLM(hf_model.eval(), tokenizer, name=name)


def _loaded(model, tokenizer, dtype, device, device_map, extra: dict):
    """An already-loaded model, cast and placed as asked (in place: weights are never copied)."""
    if extra:
        raise TypeError(
            f"{sorted(extra)}: from_pretrained options apply to hub ids and model directories only; "
            f"`model` is an already-loaded {type(model).__name__}"
        )
    hf_model, wrapped_tokenizer = _unwrap(model)
    if dtype not in (None, "auto"):
        hf_model = hf_model.to(dtype)
    if device is not None:
        hf_model = hf_model.to(device)
    if device_map is not None:
        hf_model = _dispatch(hf_model, device_map)
    return hf_model, tokenizer if tokenizer is not None else wrapped_tokenizer


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # the strategies from_pretrained takes


def _dispatch(hf_model: nn.Module, device_map) -> nn.Module:
    """Shard a loaded model with accelerate, as `from_pretrained(device_map=...)` does: "auto" and "balanced"
    spread whole blocks evenly over the GPUs, "balanced_low_0" keeps GPU 0 light, "sequential" fills them in
    order; the dispatch hooks leave the KV cache where each layer put it."""
    import accelerate
    from accelerate.utils import get_balanced_memory

    if isinstance(device_map, str) and device_map in DEVICE_MAPS:
        no_split = sorted(getattr(hf_model, "_no_split_modules", None) or [])  # a set in transformers 5
        memory = None if device_map == "sequential" else get_balanced_memory(
            hf_model, no_split_module_classes=no_split, low_zero=device_map == "balanced_low_0"
        )
        device_map = accelerate.infer_auto_device_map(hf_model, max_memory=memory, no_split_module_classes=no_split)
    if not isinstance(device_map, dict):
        raise ValueError(
            f"device_map: got {device_map!r}; valid: one of {list(DEVICE_MAPS)} or a dict {{module name: device}} "
            "(for one device, pass device= instead)"
        )
    skip = getattr(hf_model, "_skip_keys_device_placement", None)
    return accelerate.dispatch_model(hf_model, device_map=device_map, skip_keys=skip)


def _check_weights_loaded(hf_model: nn.Module) -> None:
    # A model built on the meta device has shapes but no weights: its first forward would crash deep in torch.
    # A module dispatched by accelerate is different: its weights may sit on "meta" because they are offloaded
    # (to the CPU or disk), and its hook brings them in for each forward.
    dispatched = [name for name, module in hf_model.named_modules() if hasattr(module, "_hf_hook")]
    unloaded = (
        name for name, p in hf_model.named_parameters()
        if p.is_meta and not any(d == "" or name.startswith(d + ".") for d in dispatched)
    )
    if next(unloaded, None) is not None:
        raise ValueError(
            "model: its weights are on the 'meta' device (shapes only, never loaded); load the weights "
            "or pass device='cpu' / 'cuda' to load_model"
        )


def _from_pretrained(path: str, tokenizer, dtype, device_map, trust_remote_code: bool, extra: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_path("model", path)
    shared = {"trust_remote_code": trust_remote_code}
    if extra.get("revision") is not None:  # the tokenizer of the same commit as the weights
        shared["revision"] = extra["revision"]
    kwargs = {**extra, **shared, "dtype": dtype or "auto"}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        if os.path.isdir(path):
            raise
        raise OSError(f"model: {path!r} is no local directory, and as a hub id: {err}") from err
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer or path), **shared)
    return hf_model, tokenizer


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def check_model_path(name: str, path: str) -> None:
    """A local directory, or something shaped like a hub id ('name' or 'owner/name'); anything else that
    does not exist is a missing directory, said so instead of the hub's "Repo id must be in the form"."""
    if os.path.isdir(path):
        return
    if os.path.exists(path):
        raise ValueError(f"{name}: {path!r} is a file; pass a model directory, a hub id, or a loaded model")
    if not _HUB_ID.match(path) or ".." in path or path.startswith(("./", "~")):
        raise FileNotFoundError(
            f"{name}: no such directory {path!r} (and it is not a hub id, which has the form 'name' or "
            "'owner/name')"
        )


def _unwrap(model) -> tuple[nn.Module, object]:
    """The HF module (and tokenizer, if the wrapper has one) inside `model`; weights are never copied."""
    unwrapped = unwrap_model(model)
    if unwrapped is not None:
        return unwrapped
    if isinstance(model, HookedLM):
        return model.model, model.tokenizer
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model: expected a hub id, a local directory, an HF model or a HookedLM, got "
            f"{type(model).__name__}"
        )
    return model, None


def resolve_device(device) -> torch.device | None:
    """`"auto"` picks CUDA, then Apple MPS, then CPU; None leaves the model where it is. A device this
    machine lacks (or "meta") is a ValueError naming it and the available ones."""
    if device is None:
        return None
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    return check_device("device", device)


def resolve_dtype(dtype) -> torch.dtype | str | None:
    """A torch dtype from a dtype or its name; "auto" (the checkpoint's own dtype) and None pass through."""
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(
        f"dtype: {dtype!r} is not supported; use a torch.dtype, 'auto' or one of {sorted(_DTYPES)}"
    )


def random_init(model: HookedLM, seed: int = 0) -> HookedLM:
    """A model of the same architecture and config as `model`, with freshly initialised weights.

        >>> R = random_init(A, seed=0)            # A's config and tokenizer, random weights, no download
        >>> R.n_layers == A.n_layers and R.tokenizer is A.tokenizer

    Built by `AutoModelForCausalLM.from_config` in `model`'s dtype and on its device, with the global RNG
    seeded by `seed` inside a forked RNG state (the caller's random stream is left as it was); the same
    seed gives the same weights. The control of "how alike would these architectures look untrained".
    A model sharded with `device_map` gets a copy sharded the same way (built on the CPU, then dispatched
    with `model`'s `hf_device_map`: no one GPU has to hold all of it).
    """
    from transformers import AutoModelForCausalLM

    if not isinstance(model, HookedLM):
        raise TypeError(f"model: expected a HookedLM (from stitch.load_model), got {type(model).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: got {seed!r}; valid: an integer >= 0")
    device_map = getattr(model.model, "hf_device_map", None) if is_sharded(model.model) else None
    device = torch.device("cpu") if device_map else model.device
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.device(device):
        torch.manual_seed(seed)
        hf_model = AutoModelForCausalLM.from_config(model.model.config, dtype=model.dtype)
    if device_map:
        hf_model = _dispatch(hf_model, dict(device_map))
    return load_model(hf_model, tokenizer=model.tokenizer, name=f"{model.name} (random init, seed {seed})")
