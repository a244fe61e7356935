"""stitch analyses: tensors in, tensors/records out; `analyses.figures` draws them, `analyses.report` exports.

>>> import analyses
>>> analyses.cka.linear_cka(x, y)
>>> sim = analyses.layer_similarity.layer_similarity(A, B, texts, pairing="shared")
>>> analyses.figures.similarity_heatmap(sim)
"""

from analyses import (
    alignment,
    cka,
    figures,
    generation,
    gram,
    layer_similarity,
    report,
    samples,
    similarity,
    sweep,
)

__all__ = [
    "alignment",
    "cka",
    "figures",
    "generation",
    "gram",
    "layer_similarity",
    "report",
    "samples",
    "similarity",
    "sweep",
]
