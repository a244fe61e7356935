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
"""

from stitch import _moved, adapters
from stitch.adapters import load_adapter, save_adapter
from stitch.adapters.fit import fit_adapter
from stitch.alignment import TokenAlignment, align_batch, token_spans
from stitch.alignment.pairing import Pairing, align_texts, pair_texts
from stitch.batch import Batch
from stitch.models import interop
from stitch.models.arch import ARCHITECTURES, ArchSpec
from stitch.models.cache import ActivationCache
from stitch.models.hooked import HookedLM
from stitch.models.loading import load_model
from stitch.splice import Splice, SpliceOutput
from stitch.splice.communicate import communicate
from stitch.training import checkpoint, distributed
from stitch.training.config import TrainConfig
from stitch.training.loop import TrainResult
from stitch.training.loop import train as train_adapter

_moved.install()

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "ActivationCache",
    "ArchSpec",
    "Batch",
    "HookedLM",
    "Pairing",
    "Splice",
    "SpliceOutput",
    "TokenAlignment",
    "TrainConfig",
    "TrainResult",
    "adapters",
    "align_batch",
    "align_texts",
    "checkpoint",
    "communicate",
    "distributed",
    "fit_adapter",
    "interop",
    "load_adapter",
    "load_model",
    "pair_texts",
    "save_adapter",
    "token_spans",
    "train_adapter",
]
