"""Models seen as layers 0..L of residual stream: the architecture table, hook points, HookedLM, loading.

    >>> from stitch.models import HookedLM, load_model, random_init
"""

from stitch.models.arch import ARCHITECTURES, ArchSpec
from stitch.models.cache import ActivationCache
from stitch.models.hooked import HookedLM
from stitch.models.loading import load_model, random_init
from stitch.models.states import EMBEDDINGS, model_states

__all__ = ["ARCHITECTURES", "EMBEDDINGS", "ActivationCache", "ArchSpec", "HookedLM", "load_model", "model_states", "random_init"]
