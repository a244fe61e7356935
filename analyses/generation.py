"""What B says when it reads A's states, side by side with what each model says alone.

    >>> records = side_by_side(A, B, ["The capital of France is"], source_layer=8, adapter=adapter,
    ...                        max_new_tokens=16)
    >>> records[0]["prompt"], records[0]["A alone"], records[0]["B alone"], records[0]["spliced, restitch"]
    >>> write_report("gen.html", [Section("Generations", records)])      # an escaped text table

Per prompt, one record (a dict of strings): A alone and B alone (each model's own greedy continuation, the
self-splice at its last layer, which equals HF `generate`), B spliced at source_layer → target_layer under
each policy, and the embedding-injection baseline (A's states, through the same kind of map, fed to B as
`inputs_embeds`) under each policy. Texts are escaped (`escape_text`): newlines, tabs and control characters
show as `\\n`, `\\t`, `\\x1b`, so a table row stays one line and nothing invisible hides.
"""

from __future__ import annotations

import json

import stitch
from stitch.splice.policies import Prompt, Restitch

POLICIES = (Prompt.name, Restitch.name)


def escape_text(text: str) -> str:
    """`text` with newlines, tabs, backslashes, control characters and the line separators U+2028/U+2029
    escaped (all invisible or line-breaking in a table); other characters as they are."""
    escaped = json.dumps(text, ensure_ascii=False)[1:-1].replace('\\"', '"')
    return escaped.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def side_by_side(
    A,
    B,
    prompts,
    source_layer: int,
    target_layer: int | None = None,
    adapter=None,
    embed_adapter=None,
    max_new_tokens: int = 16,
    policies=POLICIES,
    **controls,
) -> list[dict[str, str]]:
    """One record per prompt (see the module docstring); `controls` go to every `generate` call.

    `embed_adapter` maps A's layer-`source_layer` states to B's embeddings for the baseline (default: the
    identity, which needs equal widths; the baseline is left out when the widths differ and none is given).
    """
    runs = {
        "A alone": stitch.Splice(A, A, A.n_layers),
        "B alone": stitch.Splice(B, B, B.n_layers),
    }
    spliced = stitch.Splice(A, B, source_layer, target_layer, adapter=adapter)
    baseline = None
    if embed_adapter is not None or A.d_model == B.d_model:
        baseline = stitch.Splice(A, B, source_layer, injection="inputs_embeds", adapter=embed_adapter)
    texts = {}
    for name, sp in runs.items():
        texts[name] = sp.generate(prompts, max_new_tokens, "prompt", **controls)
    for policy in policies:
        texts[f"spliced, {policy}"] = spliced.generate(prompts, max_new_tokens, policy, **controls)
    for policy in policies if baseline is not None else ():
        texts[f"inputs_embeds, {policy}"] = baseline.generate(prompts, max_new_tokens, policy, **controls)
    label = f"{source_layer} → {spliced.target_layer}"
    return [
        {"prompt": escape_text(p), "splice": label, **{k: escape_text(v[i]) for k, v in texts.items()}}
        for i, p in enumerate(prompts)
    ]
