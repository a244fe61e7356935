"""A run's records: kept in order, sent to the sinks, written to `OUT/metrics.jsonl` as strict JSON.

    >>> history = RunHistory(out, sinks=[])
    >>> history.log({"split": "eval", "step": 100, "loss_recovered": 0.8})
    >>> history.evals_at(100, keys=["8:8"])                    # that step's eval records, in pair order
    >>> history.write()                                        # OUT/metrics.jsonl, atomically

Splits: "train" (the step's losses), "eval" (one per layer pair and evaluation), "samples" (generations
under the splice at an evaluation), "early_stop" (why and where the run stopped).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stitch.files import write_atomic
from stitch.training.records import strict_record


class RunHistory:
    def __init__(self, out: Path, records: list[dict[str, Any]] | None = None, sinks=()):
        self.out, self.records, self.sinks = out, list(records or []), list(sinks)

    def log(self, record: dict[str, Any]) -> None:
        record = strict_record(record)
        self.records.append(record)
        for sink in self.sinks:
            sink.log(record)

    def evals_at(self, step: int, keys: list[str]) -> list[dict[str, Any]]:
        """The eval records of `step`, one per layer pair in pair order (the last of each, if repeated); with
        one pair (`keys` of one) its records carry no "pair" field."""
        several = len(keys) > 1
        records = {r.get("pair", ""): r for r in self.records if r["split"] == "eval" and r["step"] == step}
        return [records[k if several else ""] for k in keys if (k if several else "") in records]

    def evaluated_at(self, step: int) -> bool:
        return any(r["split"] == "eval" and r["step"] == step for r in self.records)

    def stopped(self) -> bool:
        return any(r["split"] == "early_stop" for r in self.records)

    def write(self) -> None:
        lines = "".join(json.dumps(record, allow_nan=False) + "\n" for record in self.records)
        write_atomic(self.out / "metrics.jsonl", lines)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []
