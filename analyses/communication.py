"""A (k, j) sweep of activation communication over task examples, with its controls in the same records.

    >>> examples = load_tasks(tasks_path("qa"))
    >>> records = communication_sweep(A, B, examples, ks=[2, 4], js=[2, 4], combine="replace")
    >>> table = summary_rows(records)                  # mean and bootstrap interval per condition and (k, j)

    >>> adapters = pair_adapters(A, B, texts, [(2, 2), (4, 2)], method="closed_form")  # widths differ
    >>> communication_sweep(A, B, examples, [2, 4], [2], adapter=adapters)            # {(k, j): adapter}

Conditions (`CONDITIONS`): "activation" (A's states at B's positions, `stitch.communicate`) and "random" (a
matched-norm random vector at the same positions), both per (k, j); and, once per sweep (k = j = None), the
text-only controls: "none" (B alone on its own prompt), "a_context" (B alone with A's context text, the
example's `context`, before its prompt), "a_prompt" (B with A's whole prompt text directly before its own)
and "natural_language" (A's own greedy continuation of its prompt given to B as context). Each record:
condition, k, j, example id, task, `prompt_a` (what A read), `b_input` (the text B read: its prompt, after
any context), `a_said` (natural_language only: what A generated), the prediction and the task's metrics
(`analyses.evaluation`). With `adapter=None` the widths must match; `pair_adapters` learns one per (k, j).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from torch import nn

import stitch
from analyses.evaluation import Example, bootstrap_ci, evaluate
from stitch.adapters.fit import check_fit_options, collect_stats
from stitch.adapters.linear import fit_closed_form
from stitch.checks import check_choice, check_texts
from stitch.kinds import ADAPTER_METHODS, CONDITIONS, DEFAULT_KIND
from stitch.kinds import COMMUNICATION_FIT_KINDS as FIT_KINDS
from stitch.kinds import COMMUNICATION_TRAINED_KINDS as TRAINED_KINDS
from stitch.splice.communicate import make_communication

PER_LAYER = ("activation", "random")
PRIMARY = {"qa": "f1", "math": "accuracy", "mc": "accuracy", "similarity": "similarity"}
DEFINITIONS = {  # what a communication report's words mean (`stitch communicate` puts them in its run.json)
    "k, j": "A's layer k is read (0 = embeddings, L = last block's output); B's stream entering layer j is written.",
    "activation": "B reads its own prompt; at the chosen positions its layer-j stream is combined (replace, sum "
    "or mean) with A's layer-k state of A's prompt, through the adapter.",
    "random": "the same, with a random direction of the norm of B's own state there instead of A's state.",
    "none": "B alone on its own prompt (no communication).",
    "a_context": "B alone on the example's context text (A's information without A's framing), then its prompt.",
    "a_prompt": "B alone on A's whole prompt text, then its own prompt.",
    "natural_language": "A's greedy continuation of its prompt given to B as text before its prompt.",
    "metrics": "qa: SQuAD token F1 (and exact match); math: the final number (after ####, else the last) equals "
    "the answer; mc: the first standalone letter is the answer; similarity: token F1 with the reference.",
    "mean [low, high]": "the primary metric's mean over examples and its 95% percentile bootstrap interval.",
}


def communication_sweep(
    A, B, examples: Sequence[Example], ks: Sequence[int], js: Sequence[int], *, combine: str = "replace",
    adapter=None, positions="last", source_positions="last",
    inject: str = "prompt", conditions: Sequence[str] = CONDITIONS, max_new_tokens: int = 16,
    nl_tokens: int = 24, batch_size: int = 8, progress: bool = True, seed: int = 0, **controls,
) -> list[dict]:
    """Records of every condition (see the module docstring). `adapter`: None (identity), one module for
    every pair, a mapping {(k, j): adapter} (`pair_adapters`) or a function `adapter(k, j)`."""
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad:
        raise ValueError(f"conditions: got {bad}; valid: {list(CONDITIONS)}")
    adapter_of = _adapter_lookup(adapter)
    gen = dict(max_new_tokens=max_new_tokens, stop_at_eos=False, **controls)
    for k in ks:  # every pair is checked before anything runs
        for j in js:
            make_communication(A, B, ["x"], ["x"], k, j, combine, adapter_of(k, j), positions,
                               source_positions, inject)
    records = []
    for condition in (c for c in conditions if c not in PER_LAYER):
        fn, extras = _text_condition(A, B, condition, nl_tokens, gen)
        out = evaluate(examples, fn, batch_size=batch_size, progress=progress, label=condition)
        records += _tagged(examples, [{**r, **x} for r, x in zip(out, extras, strict=True)], condition, None, None)
    for k in ks:
        for j in js:
            for condition in (c for c in conditions if c in PER_LAYER):
                def fn(chunk, k=k, j=j, condition=condition):
                    return stitch.communicate(
                        A, B, [e.prompt_a for e in chunk], [e.prompt_b for e in chunk], k, j, combine,
                        adapter_of(k, j), positions, source_positions=source_positions,
                        inject=inject, control=condition, seed=seed, **gen)
                out = evaluate(examples, fn, batch_size=batch_size, progress=progress, label=f"{condition} {k}→{j}")
                records += _tagged(examples, [{**r, "b_input": e.prompt_b} for r, e in zip(out, examples, strict=True)],
                                   condition, k, j)
    return records


def _adapter_lookup(adapter) -> Callable[[int, int], object]:
    if adapter is None or isinstance(adapter, nn.Module):
        return lambda k, j: adapter
    if isinstance(adapter, Mapping):
        def lookup(k, j):
            if (k, j) not in adapter:
                raise ValueError(f"adapter: no adapter for (k, j) = ({k}, {j}); the mapping has {sorted(adapter)}")
            return adapter[(k, j)]
        return lookup
    if callable(adapter):
        return adapter
    raise TypeError(f"adapter: got {type(adapter).__name__}; valid: None, an adapter, a {{(k, j): adapter}} "
                    "mapping or a function of (k, j)")


def _text_condition(A, B, condition: str, nl_tokens: int, gen: dict):
    """(generate, extras): B alone on a text prompt (its own; after A's context; after A's prompt; after
    A's generated text); `extras` collects, per example in order, what B read (and what A said)."""
    extras: list[dict] = []

    def alone(model, prompts, **kw):
        return stitch.communicate(model, model, prompts, prompts, 0, 0, control="none", **kw)

    def run(chunk):
        said = None
        if condition == "none":
            prompts = [e.prompt_b for e in chunk]
        elif condition == "a_context":
            prompts = [f"{e.context}\n{e.prompt_b}" for e in chunk]
        elif condition == "a_prompt":
            prompts = [f"{e.prompt_a}\n{e.prompt_b}" for e in chunk]
        else:  # natural_language
            said = [s.strip() for s in alone(A, [e.prompt_a for e in chunk], **{**gen, "max_new_tokens": nl_tokens})]
            prompts = [f"{s}\n{e.prompt_b}" for s, e in zip(said, chunk, strict=True)]
        extras.extend({"b_input": p} if said is None else {"b_input": p, "a_said": a}
                      for p, a in zip(prompts, said or prompts, strict=True))
        return alone(B, prompts, **gen)

    return run, extras


def _tagged(examples, records: list[dict], condition: str, k, j) -> list[dict]:
    return [{"condition": condition, "k": k, "j": j, **r, "prompt_a": e.prompt_a}
            for e, r in zip(examples, records, strict=True)]


def pair_adapters(
    A, B, texts: Sequence[str], pairs: Sequence[tuple[int, int]], method: str = "closed_form",
    kind: str = DEFAULT_KIND, *, ridge: float | None = None, steps: int = 100, lr: float = 1e-3,
    batch_size: int = 8, save_dir: str | Path | None = None, progress: bool = True, seed: int = 0,
    classes=None,
) -> dict[tuple[int, int], nn.Module]:
    """An adapter from A's layer k to B's layer j for every (k, j), learned on paired `texts`.

    `method="closed_form"`: one pass of both models over the texts collects every pair's statistics
    (`stitch.adapters.fit.collect_stats`) and each is solved in closed form (`kind` in `FIT_KINDS`, with
    `ridge` for linear/affine; `classes`, e.g. `["shared"]`, keeps pairs of those position classes only).
    `method="trained"`: `stitch.train_adapter` per pair for `steps` AdamW steps
    at `lr` on the splice's next-token loss (`kind="projection"`: the seeds' learned projection). With `save_dir` each
    adapter is written as `save_dir/k{k}_j{j}.safetensors` (trained: its run directory `save_dir/k{k}_j{j}/`).
    """
    check_choice("method", method, ADAPTER_METHODS[1:])
    texts, pairs = check_texts(texts), [(int(k), int(j)) for k, j in pairs]
    if method == "closed_form":
        check_choice("kind", kind, FIT_KINDS)
        options = {} if ridge is None else {"ridge": ridge}
        check_fit_options(kind, options)
        stats = collect_stats(A, B, texts, pairs, batch_size=batch_size, progress=progress, classes=classes)
        adapters = {pair: fit_closed_form(kind, stats[pair], **options).float() for pair in pairs}
        if save_dir is not None:
            for (k, j), ad in adapters.items():
                stitch.save_adapter(ad, Path(save_dir) / f"k{k}_j{j}.safetensors", source_layer=k, target_layer=j)
        return adapters
    if ridge is not None:
        raise ValueError("ridge: only method='closed_form' takes a ridge penalty")
    if classes is not None:
        raise ValueError("classes: only method='closed_form' fits on chosen position classes")
    check_choice("kind", kind, TRAINED_KINDS)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(save_dir or scratch)
        return {(k, j): _trained(A, B, texts, k, j, kind, steps, lr, batch_size, root / f"k{k}_j{j}", progress, seed)
                for k, j in pairs}


def _trained(A, B, texts, k, j, kind, steps, lr, batch_size, out: Path, progress: bool, seed: int):
    config = stitch.TrainConfig(out=str(out), source_layer=k, target_layer=j, kind=kind, steps=steps, lr=lr,
                                batch_size=min(batch_size, len(texts)), resume=False, progress=progress, seed=seed)
    return stitch.train_adapter(A, B, texts, config).adapter


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
