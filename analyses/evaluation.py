"""Task evaluation over local JSONL files: metrics, per-example records, bootstrap confidence intervals.

    >>> examples = load_tasks("analyses/tasks/math.jsonl")            # or tasks_path("math")
    >>> records = evaluate(examples, lambda ex: ["42"] * len(ex), batch_size=8)   # one dict per example
    >>> summarize(records, n_boot=1000, seed=0)                         # {metric: (mean, low, high)}

File format: one JSON object per line (blank lines and lines starting with `//` are skipped), with
`"task"` one of `TASKS` and the fields below. Every task has:

- `prompt_a` (required): A's whole prompt, what the sending model reads (instructions and all).
- `prompt_b` (required): B's prompt, what the receiving model answers.
- `context` (optional; default `prompt_a`): the information in A's prompt as plain text, without A's
  framing. The controls of `analyses.communication` give B this ("a_context") or A's whole prompt
  ("a_prompt") before its own; the shipped files frame `prompt_a` so the two differ.
- `id` (optional; default `file:line`): names the example in the records.

- `qa`: `prompt_a`, `prompt_b`, `answers` (list of strings). Metrics `exact_match`, `f1` (SQuAD: lower case,
  no punctuation, no articles, whitespace collapsed; best over the answers).
- `math`: `prompt_a`, `prompt_b`, `answer` (a number, or GSM8K text ending in `#### 42`). Metric `accuracy`:
  the final number of the continuation (after the last `####` if any, else its last number; commas, `$` and
  `%` dropped, so "1,000" is 1000 and "$5.00" is 5) equals the answer's.
- `mc`: `prompt_a`, `prompt_b`, `choices` (list), `answer` (a letter). B's prompt gets the choices as
  `A. ...` lines and `Answer:`; metric `accuracy`: the first standalone letter A-Z of the continuation.
- `similarity`: `prompt_a`, `prompt_b`, `reference` (text). Metric `similarity`: token F1 between the
  continuation and the reference (SQuAD normalisation).

Files the project wrote ship in `analyses/tasks/` (package data), so evaluation runs offline; any local file
in the format works. A malformed line is an error naming the file and the line.
"""

from __future__ import annotations

import collections
import json
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

TASK_DIR = Path(__file__).parent / "tasks"
REQUIRED = {
    "qa": ("prompt_a", "prompt_b", "answers"),
    "math": ("prompt_a", "prompt_b", "answer"),
    "mc": ("prompt_a", "prompt_b", "choices", "answer"),
    "similarity": ("prompt_a", "prompt_b", "reference"),
}
TASKS = tuple(REQUIRED)


@dataclass(frozen=True)
class Example:
    """One task example: what A and B read, the gold fields, and where it came from."""

    task: str
    id: str
    prompt_a: str
    prompt_b: str
    gold: dict = field(default_factory=dict)
    context: str = ""  # the information in A's prompt (default: A's prompt); see the module docstring

    def __post_init__(self):
        if not self.context:
            object.__setattr__(self, "context", self.prompt_a)


def tasks_path(name: str) -> Path:
    """A task file shipped with the project: `tasks_path("qa")` → analyses/tasks/qa.jsonl."""
    path = TASK_DIR / f"{name}.jsonl"
    if not path.exists():
        shipped = sorted(p.stem for p in TASK_DIR.glob("*.jsonl"))
        raise FileNotFoundError(f"task: no shipped task {name!r}; valid: {shipped} or a path to a .jsonl file")
    return path


def load_tasks(path: str | Path) -> list[Example]:
    """The examples of a JSONL task file (see the module docstring); errors name the file and the line."""
    path = Path(path)
    if not path.exists() and not path.suffix:
        path = tasks_path(str(path))
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        examples.append(_example(path, number, line))
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def _example(path: Path, number: int, line: str) -> Example:
    where = f"{path}:{number}"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    task = data.get("task")
    if task not in REQUIRED:
        raise ValueError(f"{where}: task: got {task!r}; valid: {list(TASKS)}")
    missing = [k for k in REQUIRED[task] if k not in data]
    if missing:
        raise ValueError(f"{where}: a {task!r} example needs {list(REQUIRED[task])}; missing {missing}")
    for key in ("prompt_a", "prompt_b", *(["context"] if "context" in data else [])):
        if not isinstance(data[key], str) or not data[key]:
            raise ValueError(f"{where}: {key}: expected a non-empty string, got {data[key]!r}")
    if task == "qa" and (not isinstance(data["answers"], list) or not data["answers"]):
        raise ValueError(f"{where}: answers: expected a non-empty list of strings")
    if task == "mc" and (not isinstance(data["choices"], list) or len(data["choices"]) < 2
                         or data["answer"] not in string.ascii_uppercase[: len(data["choices"])]):
        raise ValueError(f"{where}: mc: expected >= 2 choices and an answer letter among them, got "
                         f"{data.get('answer')!r} for {len(data['choices'])} choices")
    gold = {k: v for k, v in data.items() if k not in ("task", "id", "prompt_a", "prompt_b", "context")}
    prompt_b = _mc_prompt(data["prompt_b"], data["choices"]) if task == "mc" else data["prompt_b"]
    return Example(task, str(data.get("id", where)), data["prompt_a"], prompt_b, gold, data.get("context", ""))


def _mc_prompt(question: str, choices: list) -> str:
    lines = [f"{string.ascii_uppercase[i]}. {c}" for i, c in enumerate(choices)]
    return "\n".join([question, *lines, "Answer:"])


# ---- metrics ---------------------------------------------------------------------------------------

def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(a) for a in answers))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """SQuAD token F1, the best over the answers."""
    return max(_f1(normalize_answer(prediction).split(), normalize_answer(a).split()) for a in answers)


def _f1(pred: list[str], gold: list[str]) -> float:
    if not pred or not gold:
        return float(pred == gold)
    common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def final_number(text: str) -> float | None:
    """GSM8K-style final answer: the number after the last "####", else the last number in the text."""
    text = str(text)
    after = "####" in text
    if after:
        text = text.rsplit("####", 1)[1]
    cleaned = re.sub(r"(?<=\d),(?=\d{3})", "", text).replace("$", "").replace("%", "")
    found = _NUMBER.findall(cleaned)
    if not found:
        return None
    return float(found[0] if after else found[-1])


def number_match(prediction: str, answer) -> float:
    gold, pred = final_number(str(answer)), final_number(prediction)
    return float(gold is not None and pred is not None and abs(gold - pred) < 1e-6)


def choice_letter(text: str) -> str | None:
    """The first standalone capital letter of a continuation ("B", "(C)", " D." ...)."""
    found = re.search(r"\b([A-Z])\b", text)
    return found.group(1) if found else None


METRICS: dict[str, Callable[[str, dict], dict[str, float]]] = {
    "qa": lambda p, g: {"exact_match": exact_match(p, g["answers"]), "f1": token_f1(p, g["answers"])},
    "math": lambda p, g: {"accuracy": number_match(p, g["answer"])},
    "mc": lambda p, g: {"accuracy": float(choice_letter(p) == g["answer"])},
    "similarity": lambda p, g: {"similarity": token_f1(p, [g["reference"]])},
}


def score(example: Example, prediction: str) -> dict[str, float]:
    return METRICS[example.task](prediction, example.gold)


# ---- evaluation -------------------------------------------------------------------------------------

def evaluate(examples: Sequence[Example], generate: Callable[[Sequence[Example]], list[str]], *,
             batch_size: int = 8, progress: bool = True, label: str = "") -> list[dict]:
    """Per-example records `{id, task, prediction, <metrics>}`; `generate` maps a batch to continuations."""
    records = []
    bar = tqdm(total=len(examples), desc=label or "evaluate", disable=not progress)
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        for ex, prediction in zip(chunk, generate(chunk), strict=True):
            records.append({"id": ex.id, "task": ex.task, "prediction": prediction, **score(ex, prediction)})
        bar.update(len(chunk))
    bar.close()
    return records


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0):
    """(mean, low, high): the percentile bootstrap interval of the mean (resampling examples)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("values: no examples to bootstrap")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (n_boot, values.size))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    mean = float(values.mean())
    return mean, float(min(low, mean)), float(max(high, mean))


def summarize(records: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """{metric: (mean, low, high)} over the records that carry it."""
    metrics = sorted({k for r in records for k, v in r.items() if isinstance(v, float)})
    return {m: bootstrap_ci([r[m] for r in records if m in r], n_boot, seed=seed) for m in metrics}
