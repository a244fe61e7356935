"""Task metrics against hand-checked cases, bootstrap intervals, JSONL loading errors, the communication sweep."""

import json

import pytest

from analyses import evaluation as ev
from analyses.communication import communication_sweep, summary_rows
from analyses.figures.communication import communication_heatmap
from tests.test_generation import hf_greedy


@pytest.mark.parametrize("text, number", [
    ("1,000", 1000.0), ("$5.00", 5.0), ("-3.5", -3.5), ("He has 3 then 4.\n#### 42", 42.0),
    ("so 12 eggs and 36 in all", 36.0), ("#### 1,250,000 dollars", 1250000.0), ("no number", None),
    ("The answer is 7%.", 7.0)])
def test_final_number(text, number):
    assert ev.final_number(text) == number


def test_em_and_f1_hand_checked():
    assert ev.exact_match("The Paris!", ["paris"]) == 1.0
    assert ev.exact_match("in Paris", ["Paris"]) == 0.0
    assert ev.token_f1("in Paris", ["Paris"]) == pytest.approx(2 / 3)  # p = 1/2, r = 1
    assert ev.token_f1("blue red", ["red", "green"]) == pytest.approx(2 / 3)
    assert ev.token_f1("nothing", ["blue"]) == 0.0
    assert ev.number_match("so $5.00 total", "#### 5") == 1.0
    assert ev.choice_letter(" (C) because") == "C" and ev.choice_letter("none") is None


def test_bootstrap_contains_the_estimate_and_shrinks_with_n():
    small = [1.0, 0.0, 1.0, 1.0, 0.0] * 4
    mean, low, high = ev.bootstrap_ci(small, seed=1)
    assert low <= mean <= high and mean == pytest.approx(0.6)
    _, low_big, high_big = ev.bootstrap_ci(small * 25, seed=1)
    assert high_big - low_big < (high - low) / 3


def test_shipped_tasks_load_and_mc_prompts_list_choices():
    for name in ev.TASKS:
        examples = ev.load_tasks(ev.tasks_path(name))
        assert examples and all(e.task == name for e in examples)
    mc = ev.load_tasks(ev.tasks_path("mc"))[0]
    assert "\nB. 100 C\n" in mc.prompt_b and mc.prompt_b.endswith("Answer:")


@pytest.mark.parametrize("line, message", [
    ("{not json", "not JSON"), ("[1]", "expected a JSON object"),
    (json.dumps({"task": "trivia"}), "task: got 'trivia'"),
    (json.dumps({"task": "qa", "prompt_a": "x", "prompt_b": "y"}), "missing \\['answers'\\]"),
    (json.dumps({"task": "mc", "prompt_a": "x", "prompt_b": "y", "choices": ["a", "b"], "answer": "C"}), "mc:")])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "t.jsonl"
    good = json.dumps({"task": "math", "prompt_a": "x", "prompt_b": "y", "answer": "1"})
    path.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(ValueError, match=f"t.jsonl:3: .*{message}"):
        ev.load_tasks(path)


def test_communication_sweep_records_every_condition(llama):
    examples = ev.load_tasks(ev.tasks_path("math"))[:3]
    records = communication_sweep(llama, llama, examples, [1, 2], [2], max_new_tokens=3, nl_tokens=3,
                                  progress=False)
    conditions = {(r["condition"], r["k"], r["j"]) for r in records}
    assert conditions == {("none", None, None), ("a_context", None, None), ("a_prompt", None, None),
                          ("natural_language", None, None), ("activation", 1, 2), ("activation", 2, 2),
                          ("random", 1, 2), ("random", 2, 2)}
    assert len(records) == 8 * 3 and all("accuracy" in r for r in records)
    rows = summary_rows(records, n_boot=50)
    assert all(r["low"] <= r["mean"] <= r["high"] for r in rows)
    assert communication_heatmap(rows).data[0].z is not None
    with pytest.raises(ValueError, match="k"):
        communication_sweep(llama, llama, examples, [99], [1], progress=False)


def test_text_controls_are_distinct_and_give_b_what_they_say(llama):
    """none / a_context / a_prompt / natural_language: B read exactly the text each names (recorded as
    b_input), and its prediction equals B alone generating from that text."""
    ex = ev.load_tasks(ev.tasks_path("qa"))[:2]
    assert all(e.context != e.prompt_a and e.context in e.prompt_a for e in ex)  # the shipped framing
    records = communication_sweep(llama, llama, ex, [1], [1], conditions=["none", "a_context", "a_prompt",
                                  "natural_language"], max_new_tokens=3, nl_tokens=2, progress=False)
    by = {(r["condition"], r["id"]): r for r in records}
    for e in ex:
        said = by["natural_language", e.id]["a_said"]
        expected = {"none": e.prompt_b, "a_context": f"{e.context}\n{e.prompt_b}",
                    "a_prompt": f"{e.prompt_a}\n{e.prompt_b}", "natural_language": f"{said}\n{e.prompt_b}"}
        for condition, text in expected.items():
            record = by[condition, e.id]
            assert record["b_input"] == text
            assert record["prediction"] == llama.tokenizer.decode(hf_greedy(llama, [text], 3)[0])
        assert said == llama.tokenizer.decode(hf_greedy(llama, [e.prompt_a], 2)[0]).strip()
    assert len({by[c, ex[0].id]["b_input"] for c in ("none", "a_context", "a_prompt")}) == 3


def test_context_defaults_to_prompt_a_and_is_checked(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"task": "math", "prompt_a": "Say: 2 + 2", "prompt_b": "y", "answer": "4"},
            {"task": "math", "prompt_a": "Say: 2 + 2", "context": "2 + 2", "prompt_b": "y", "answer": "4"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plain, framed = ev.load_tasks(path)
    assert (plain.context, framed.context) == ("Say: 2 + 2", "2 + 2") and "context" not in framed.gold
    path.write_text(json.dumps({**rows[1], "context": ""}) + "\n")
    with pytest.raises(ValueError, match="t.jsonl:1: context: expected a non-empty string"):
        ev.load_tasks(path)
