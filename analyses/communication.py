"""A (k, j) sweep of activation communication over task examples, with its controls in the same records.

    >>> examples = load_tasks(tasks_path("qa"))
    >>> records = communication_sweep(A, B, examples, ks=[2, 4], js=[2, 4], combine="replace")
    >>> table = summary_rows(records)                  # mean and bootstrap interval per condition and (k, j)

Conditions (`CONDITIONS`): "activation" (A's states at B's positions, `stitch.communicate`), "random" (a
matched-norm random vector at the same positions), both per (k, j); and, once per sweep (k = j = None), "none"
(B alone on its prompt), "a_text" (B with A's prompt text before its own: for the shipped tasks A's prompt is
the context, so this is also "B with A's context text") and "natural_language" (A's own greedy continuation
of its prompt given to B as context). Each record: condition, k, j, example id, task, B's prompt, the
prediction and the task's metrics (`analyses.evaluation`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import stitch
from analyses.evaluation import Example, bootstrap_ci, evaluate
from stitch.splice.communicate import make_communication

CONDITIONS = ("activation", "random", "none", "a_text", "natural_language")
PER_LAYER = ("activation", "random")
PRIMARY = {"qa": "f1", "math": "accuracy", "mc": "accuracy", "similarity": "similarity"}


def communication_sweep(
    A, B, examples: Sequence[Example], ks: Sequence[int], js: Sequence[int], *, combine: str = "replace",
    adapter: Callable[[int, int], object] | None = None, positions="last", source_positions="last",
    inject: str = "prompt", conditions: Sequence[str] = CONDITIONS, max_new_tokens: int = 16,
    nl_tokens: int = 24, batch_size: int = 8, progress: bool = True, seed: int = 0, **controls,
) -> list[dict]:
    """Records of every condition (see the module docstring); `adapter(k, j)` gives the adapter for a pair."""
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad:
        raise ValueError(f"conditions: got {bad}; valid: {list(CONDITIONS)}")
    gen = dict(max_new_tokens=max_new_tokens, stop_at_eos=False, **controls)
    for k in ks:  # every pair is checked before anything runs
        for j in js:
            make_communication(A, B, ["x"], ["x"], k, j, combine,
                               None if adapter is None else adapter(k, j), positions,
                               source_positions, inject)
    records = []
    for condition in (c for c in conditions if c not in PER_LAYER):
        fn = _text_condition(A, B, condition, nl_tokens, batch_size, gen)
        records += _tagged(evaluate(examples, fn, batch_size=batch_size, progress=progress, label=condition),
                           condition, None, None)
    for k in ks:
        for j in js:
            for condition in (c for c in conditions if c in PER_LAYER):
                def fn(chunk, k=k, j=j, condition=condition):
                    return stitch.communicate(
                        A, B, [e.prompt_a for e in chunk], [e.prompt_b for e in chunk], k, j, combine,
                        None if adapter is None else adapter(k, j), positions, source_positions=source_positions,
                        inject=inject, control=condition, seed=seed, **gen)
                out = evaluate(examples, fn, batch_size=batch_size, progress=progress, label=f"{condition} {k}→{j}")
                records += _tagged(out, condition, k, j)
    return records


def _text_condition(A, B, condition: str, nl_tokens: int, batch_size: int, gen: dict):
    """B alone on a prompt built from text: its own, after A's prompt, or after A's generated text."""
    def alone(model, prompts, **kw):
        return stitch.communicate(model, model, prompts, prompts, 0, 0, control="none", **kw)

    def run(chunk):
        prompts = [e.prompt_b for e in chunk]
        if condition == "a_text":
            prompts = [f"{e.prompt_a}\n{e.prompt_b}" for e in chunk]
        elif condition == "natural_language":
            said = alone(A, [e.prompt_a for e in chunk], **{**gen, "max_new_tokens": nl_tokens})
            prompts = [f"{s.strip()}\n{e.prompt_b}" for s, e in zip(said, chunk, strict=True)]
        return alone(B, prompts, **gen)

    return run


def _tagged(records: list[dict], condition: str, k, j) -> list[dict]:
    return [{"condition": condition, "k": k, "j": j, **r} for r in records]


def summary_rows(records: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """One row per (condition, k, j, task): n, and the primary metric's mean with its 95% bootstrap interval."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        key = (r["condition"], r["k"], r["j"], r["task"])
        groups.setdefault(key, []).append(r[PRIMARY[r["task"]]])
    rows = []
    for (condition, k, j, task), values in groups.items():
        mean, low, high = bootstrap_ci(values, n_boot, seed=seed)
        rows.append({"condition": condition, "k": k, "j": j, "task": task, "metric": PRIMARY[task],
                     "n": len(values), "mean": mean, "low": low, "high": high})
    return rows


def heatmap_grid(rows: Sequence[dict], condition: str = "activation", task: str | None = None):
    """(ks, js, values[k][j]) of the summary's mean for one condition (and task; default: the first)."""
    chosen = [r for r in rows if r["condition"] == condition and (task is None or r["task"] == task)]
    task = task or (chosen[0]["task"] if chosen else None)
    chosen = [r for r in chosen if r["task"] == task]
    ks, js = sorted({r["k"] for r in chosen}), sorted({r["j"] for r in chosen})
    values = [[next((r["mean"] for r in chosen if r["k"] == k and r["j"] == j), None) for j in js] for k in ks]
    return ks, js, values
