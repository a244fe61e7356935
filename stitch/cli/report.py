"""`stitch report RUN_DIR`: rebuild the HTML report of any run directory from its records.

    $ stitch report stitch-demo                          # -> stitch-demo/report.html
    $ stitch report runs/sweep --out sweep.html --plotlyjs beside
    >>> run(ReportConfig(run_dir="stitch-demo"))

Reads `run.json` when the directory has one (the demo writes it), else the records stitch commands write
(`records.json`, `metrics.jsonl`, `summary.json`, `similarity.json`, `config.json`); see
`analyses.run_report`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from analyses.report import PLOTLYJS
from analyses.run_report import write_run_report
from stitch.config import Config, option


@dataclass(frozen=True)
class ReportConfig(Config):
    POSITIONAL: ClassVar[tuple[str, ...]] = ("run_dir",)

    run_dir: str = option(help="a directory a stitch command wrote")
    out: str | None = option(None, help="where to write the report (default: RUN_DIR/report.html)")
    plotlyjs: str = option("inline", choices=PLOTLYJS, help="inline: plotly.js inside the file; beside: "
                           "plotly.min.js written once next to it (one copy for several reports)")


def run(config: ReportConfig) -> Path:
    path = write_run_report(config.run_dir, config.out, plotlyjs=config.plotlyjs)
    print(f"report: {path}")
    return path
