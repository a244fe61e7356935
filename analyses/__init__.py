"""stitch analyses: tensors in, tensors/records out; `analyses.figures` draws them.

    >>> import analyses
    >>> analyses.cka.linear_cka(x, y)
"""
