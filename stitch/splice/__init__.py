"""Splices: A's states through an adapter into B, the ways they enter B, and their scoring.

    >>> from stitch.splice import Splice
    >>> sp = Splice(A, B, source_layer=16)
"""

from stitch.alignment.pairing import Aligned, align_texts
from stitch.splice.injection import INJECTIONS, Injection, injection_for, register_injection
from stitch.splice.score import ClassScore, References, SpliceScore, score_splices
from stitch.splice.splice import Splice, SpliceOutput

__all__ = [
    "INJECTIONS",
    "Aligned",
    "ClassScore",
    "Injection",
    "References",
    "Splice",
    "SpliceOutput",
    "SpliceScore",
    "align_texts",
    "injection_for",
    "register_injection",
    "score_splices",
]
