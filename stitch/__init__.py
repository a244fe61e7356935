"""stitch: cross-model stitching of language models.

>>> import stitch
>>> A = stitch.load_model(hf_model_a, tokenizer=tok_a)
>>> B = stitch.load_model(hf_model_b, tokenizer=tok_b)
>>> sp = stitch.Splice(A, B, source_layer=4)
>>> sp(["some text"]).loss

Layout: `stitch.models` (wrapping, hooks, loading), `stitch.alignment` (spans, alignment, the pairing),
`stitch.adapters` (adapters, closed-form math, fits from models), `stitch.splice` (splice, injection,
scoring, generation), `stitch.training`, `stitch.cli` (recipes). Old module paths (`stitch.fit_models`,
`stitch.train`, `stitch.toy`, ...) still import, with a DeprecationWarning (`stitch._moved`).

The public names are resolved on first use (PEP 562), so `import stitch` and `stitch --help` import no torch.
"""

from stitch import _moved
from stitch._lazy import lazy_exports

_moved.install()

__version__ = "0.1.0"

_EXPORTS = {
    "ARCHITECTURES": "stitch.models.arch",
    "ArchSpec": "stitch.models.arch",
    "ActivationCache": "stitch.models.cache",
    "Batch": "stitch.batch",
    "HookedLM": "stitch.models.hooked",
    "Pairing": "stitch.alignment.pairing",
    "Splice": "stitch.splice.splice",
    "SpliceOutput": "stitch.splice.splice",
    "TokenAlignment": "stitch.alignment",
    "TrainConfig": "stitch.training.config",
    "TrainResult": "stitch.training.loop",
    "adapters": "stitch.adapters",
    "align_batch": "stitch.alignment",
    "align_texts": "stitch.alignment.pairing",
    "checkpoint": "stitch.training.checkpoint",
    "communicate": "stitch.splice.communicate:communicate",
    "distributed": "stitch.training.distributed",
    "fit_adapter": "stitch.adapters.fit",
    "interop": "stitch.models.interop",
    "load_adapter": "stitch.adapters.io",
    "load_model": "stitch.models.loading",
    "pair_texts": "stitch.alignment.pairing",
    "save_adapter": "stitch.adapters.io",
    "token_spans": "stitch.alignment",
    "train_adapter": "stitch.training.loop:train",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
