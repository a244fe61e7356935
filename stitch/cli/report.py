"""`stitch report RUN_DIR`: rebuild the HTML report of any run directory from its records.

    $ stitch report stitch-demo                          # -> stitch-demo/report.html
    $ stitch report runs/sweep --out sweep.html --plotlyjs beside
    >>> run(ReportConfig(run_dir="stitch-demo"))

Reads `run.json` when the directory has one (the demo writes it), else the records stitch commands write
(`records.json`, `metrics.jsonl`, `summary.json`, `similarity.json`, `config.json`); see
`analyses.run_report`.
"""

from __future__ import annotations

from pathlib import Path

from analyses.run_report import write_run_report
from stitch.cli.configs import ReportConfig


def run(config: ReportConfig) -> Path:
    path = write_run_report(config.run_dir, config.out, plotlyjs=config.plotlyjs)
    print(f"report: {path}")
    return path
