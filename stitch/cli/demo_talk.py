"""The demo's two exchange steps: B generating from A's states, and activation communication from A to B.

    >>> sections = generation_step(demo)       # side by side: A alone, B alone, spliced, embedding baseline
    >>> sections = communication_step(demo)    # a (k, j) sweep with its controls on held-out passages

Both run on held-out text only. Generation prompts are the first `PROMPT_WORDS` words of held-out texts;
B continues them alone, reading A's states through the trained adapter at the best layer, and through the
embedding-injection baseline's adapter (`analyses.generation.side_by_side`). Communication examples are
cut from held-out passages (`passage_examples`): A reads `CONTEXT_WORDS` words of a passage, B only the
last `CUE_WORDS` of them, and B's continuation is scored by token F1 against the passage's next
`ANSWER_WORDS` words (`analyses.evaluation`, task "similarity"); A's last state at layer k goes through a
closed-form adapter fitted on shared pairs and replaces B's last prompt state at layer j
(`analyses.communication.communication_sweep`).
"""

from __future__ import annotations

from analyses.communication import communication_sweep, pair_adapters, summary_rows
from analyses.evaluation import Example
from analyses.figures.communication import communication_heatmap
from analyses.generation import escape_text, side_by_side
from analyses.run_report import layer_label
from stitch.cli.common import write_json, write_jsonl
from stitch.files import write_atomic

# A's prompt is the bare passage, so "a_prompt" (A's prompt text before B's) would repeat "a_context".
CONDITIONS = ("activation", "random", "none", "a_context", "natural_language")
PROMPT_WORDS = 8
CONTEXT_WORDS, CUE_WORDS, ANSWER_WORDS = 20, 4, 8


def generation_prompts(texts: list[str], n: int, words: int = PROMPT_WORDS) -> list[str]:
    """The first `words` words of the first `n` texts that have more (whitespace collapsed)."""
    return [" ".join(t.split()[:words]) for t in texts if len(t.split()) > words][:n]


def generation_step(demo) -> list[dict]:
    cfg, best, baseline = demo.config, demo.records["best"], demo.records["baseline"]
    prompts = generation_prompts(demo.held_out, 2 if cfg.quick else 4)
    rows = side_by_side(demo.A, demo.B, prompts, best.source_layer, best.target_layer,
                        adapter=demo.records["trained_adapter"], embed_adapter=baseline.adapter,
                        max_new_tokens=6 if cfg.quick else 16)
    write_json(demo.out / "generate" / "samples.json", rows)
    first = rows[0]
    demo.fact("generation, first held-out prompt", f"{first['prompt']!r} → B alone {first['B alone']!r}; "
              f"B reading A's layer {best.source_layer} {first['spliced, restitch']!r}",
              "greedy continuations; B continuing sensibly from A's states means the map carries what B reads")
    return [{"kind": "table", "title": f"Generations: B reading A's layer {best.source_layer} (trained adapter)",
             "file": "generate/samples.json",
             "note": "Greedy continuations of held-out prompts: each model alone, B spliced at "
             f"{best.source_layer}→{best.target_layer} with the trained adapter, and the embedding-injection "
             "baseline (A's states mapped to B's input embeddings), under the prompt policy (A's states for "
             "the prompt only; B reads its own tokens after) and restitch (A re-reads the text at every "
             "step). Newlines and control characters are shown escaped."}]


def passage_examples(texts: list[str], n: int) -> list[Example]:
    """Held-out passages cut into (A's context, B's cue, the true continuation) "similarity" examples."""
    examples = []
    for i, text in enumerate(texts):
        words = text.split()
        if len(words) < CONTEXT_WORDS + ANSWER_WORDS:
            continue
        context, answer = words[:CONTEXT_WORDS], words[CONTEXT_WORDS : CONTEXT_WORDS + ANSWER_WORDS]
        examples.append(Example("similarity", f"held-out-{i}", " ".join(context), " ".join(context[-CUE_WORDS:]),
                                {"reference": " ".join(answer)}))
    return examples[:n]


def communication_step(demo) -> list[dict]:
    cfg = demo.config
    examples = passage_examples(demo.held_out, 4 if cfg.quick else 16)
    layers = list(range(1, min(demo.A.n_layers, demo.B.n_layers) + 1))
    pairs = [(k, j) for k in layers for j in layers]
    adapters = pair_adapters(demo.A, demo.B, demo.fit[:200], pairs, "closed_form", cfg.kind,
                             classes=["shared"], progress=cfg.progress, **_ridge(cfg))
    records = communication_sweep(demo.A, demo.B, examples, layers, layers, adapter=adapters,
                                  max_new_tokens=ANSWER_WORDS + 4, nl_tokens=16, progress=cfg.progress,
                                  conditions=CONDITIONS)
    rows = summary_rows(records, n_boot=1000, seed=0)
    write_jsonl(demo.out / "communicate" / "records.jsonl", records)
    write_json(demo.out / "communicate" / "summary.json", rows)
    write_atomic(demo.out / "figures" / "communication.json", communication_heatmap(rows).to_json())
    by_id = {e.id: e for e in examples}
    samples = [{"condition": r["condition"], "k": layer_label(r["k"]), "j": layer_label(r["j"]),
                "A reads": escape_text(by_id[r["id"]].prompt_a), "B reads": escape_text(by_id[r["id"]].prompt_b),
                "B says": escape_text(r["prediction"]), "true continuation": by_id[r["id"]].gold["reference"],
                "token F1": r["similarity"]} for r in _samples(records, examples[0].id)]
    write_json(demo.out / "communicate" / "samples.json", samples)
    _communication_facts(demo, rows)
    note = (f"{len(examples)} held-out passages: A reads {CONTEXT_WORDS} words, B only the last {CUE_WORDS}; "
            f"the score is token F1 of B's continuation against the passage's next {ANSWER_WORDS} words. "
            "activation: A's last state at layer k, through an affine map fitted on shared pairs, replaces B's "
            "last prompt state at layer j; random: a random vector of the same norm there; none: B alone on "
            "its cue; a_context: B reads A's context itself before its cue (A's prompt is the bare "
            "context here, so the a_prompt control would repeat it and is left out); natural_language: B reads A's own "
            "continuation of the context.")
    return [
        {"kind": "figure", "title": "Activation communication: token F1 by (A layer k, B layer j)",
         "file": "figures/communication.json", "note": note},
        {"kind": "table", "title": "Communication scores with 95% bootstrap intervals",
         "data": [{**r, "k": layer_label(r["k"]), "j": layer_label(r["j"])} for r in rows],
         "note": "The controls without layers (k = j = —) do not depend on them. Records: communicate/."},
        {"kind": "table", "title": "Communication: one passage under every condition",
         "file": "communicate/samples.json"},
    ]


def _communication_facts(demo, rows: list[dict]) -> None:
    pairs = {(r["k"], r["j"]) for r in rows if r["condition"] == "activation"}
    means = {r["condition"]: r for r in rows if r["k"] is None}
    best = max((r for r in rows if r["condition"] == "activation"), key=lambda r: r["mean"])
    demo.fact(f"communication token F1, activation at k={best['k']}, j={best['j']}",
              f"{best['mean']:.3f} [{best['low']:.3f}, {best['high']:.3f}]; B alone {means['none']['mean']:.3f}, "
              f"random {_mean(rows, 'random', best['k'], best['j']):.3f}, A's text {means['a_context']['mean']:.3f}",
              f"overlap of B's words with the passage's true next words, the best of {len(pairs)} (k, j) pairs "
              "(a maximum: see the heatmap); above B alone and random, with intervals apart, would mean A's "
              "state told B something its cue did not")


def _mean(rows, condition, k, j) -> float:
    return next(r["mean"] for r in rows if r["condition"] == condition and r["k"] == k and r["j"] == j)


def _samples(records: list[dict], example_id: str) -> list[dict]:
    return [r for r in records if r["id"] == example_id]


def _ridge(cfg) -> dict:
    return {"ridge": cfg.ridge} if cfg.kind in ("affine", "linear") else {}
