"""`stitch align`: how two tokenizers line up over a corpus — summary JSON and an HTML report.

    $ stitch align --source-tokenizer meta-llama/Llama-3.1-8B --target-tokenizer mistralai/Mistral-7B-v0.3 \\
          --texts texts.txt --out runs/align
    >>> run(AlignConfig(source_tokenizer="a/", target_tokenizer="b/", texts="texts.txt", out="runs/align"))

Writes `OUT/summary.json` (`analyses.alignment.AlignmentSummary.to_dict()`), `OUT/report.html` (summary
table, token-alignment map of the first text, fan-in histogram) and `OUT/config.yaml`.
"""

from __future__ import annotations

from pathlib import Path

from analyses.alignment import alignment_summary
from analyses.figures import alignment_map, fan_in_histogram
from analyses.report import Section, write_report
from stitch.alignment import TokenAlignment
from stitch.cli.common import load_tokenizer, read_texts, save_run_config, write_json
from stitch.cli.configs import AlignConfig

__all__ = ["AlignConfig", "run"]


def run(config: AlignConfig) -> dict:
    """Summarise the alignment of every text, write the artifacts, and return the summary as a dict."""
    texts = read_texts("texts", config.texts)
    source = load_tokenizer("source_tokenizer", config.source_tokenizer)
    target = load_tokenizer("target_tokenizer", config.target_tokenizer)
    summary = alignment_summary(texts, source, target)
    # a map of a whole long document would be unreadable and megabytes of HTML
    first = TokenAlignment.build(texts[0][: config.map_chars], source, target)
    out = Path(config.out)
    write_json(out / "summary.json", summary.to_dict())
    _write_report(out / "report.html", summary, first, config, len(texts))
    save_run_config(config, out / "config.yaml")
    print(f"wrote {out / 'summary.json'} and {out / 'report.html'}")
    return summary.to_dict()


def _write_report(path: Path, summary, first: TokenAlignment, config: AlignConfig, n_texts: int) -> None:
    stats = {k: v for k, v in summary.to_dict().items() if k != "source_per_target_hist"}
    names = {"source_name": config.source_tokenizer, "target_name": config.target_tokenizer}
    sections = [
        Section(
            "Summary",
            [{"statistic": k, "value": v} for k, v in stats.items()],
            note=f"{n_texts} texts from {config.texts}",
        ),
        Section(
            "Token alignment of the first text",
            alignment_map(first, **names, chars_per_line=config.chars_per_line),
        ),
        Section("Fan-in", fan_in_histogram(summary)),
    ]
    title = f"Token alignment: {config.source_tokenizer} → {config.target_tokenizer}"
    write_report(path, sections, title=title)
