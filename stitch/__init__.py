"""stitch: cross-model stitching of language models.

>>> import stitch
>>> A = stitch.load_model(hf_model_a, tokenizer=tok_a)
>>> B = stitch.load_model(hf_model_b, tokenizer=tok_b)
>>> sp = stitch.Splice(A, B, source_layer=4)
>>> sp(["some text"]).loss
"""

from stitch import adapters, checkpoint, distributed, interop
from stitch.adapters import load_adapter, save_adapter
from stitch.alignment import TokenAlignment, align_batch, token_spans
from stitch.arch import ARCHITECTURES, ArchSpec
from stitch.batch import Batch
from stitch.cache import ActivationCache
from stitch.fit_models import fit_adapter
from stitch.loading import load_model
from stitch.model import HookedLM
from stitch.splice import Splice, SpliceOutput, align_texts
from stitch.train import TrainResult
from stitch.train import train as train_adapter
from stitch.train_config import TrainConfig

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "ActivationCache",
    "ArchSpec",
    "Batch",
    "HookedLM",
    "Splice",
    "SpliceOutput",
    "TokenAlignment",
    "TrainConfig",
    "TrainResult",
    "adapters",
    "checkpoint",
    "distributed",
    "align_batch",
    "align_texts",
    "fit_adapter",
    "load_adapter",
    "save_adapter",
    "token_spans",
    "train_adapter",
    "interop",
    "load_model",
]
