"""``python -m workbench steer`` on a tiny checkpoint saved to a temporary folder."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from workbench.cli import main

GERMAN = ["Der Hund ist nicht in dem Haus, aber die Katze ist hier.", "Die Kinder spielen auf der Straße und im Park.",
          "Das Wetter ist heute schön und wir gehen in den Wald.", "Ich habe das Buch gelesen, aber es war zu lang.",
          "Wir fahren morgen mit dem Zug nach Berlin zu meiner Mutter."]
ENGLISH = ["The dog is not in the house, but the cat is here.", "The children play in the street and in the park.",
           "The weather is nice today and we go into the forest.", "I have read the book, but it was too long.",
           "Tomorrow we take the train to London to see my mother."]


@pytest.fixture
def checkpoint(tmp_path):
    from workbench.testing import tiny_model

    model, tok = tiny_model("qwen3_moe")
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_jsonl(path, texts):
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n", encoding="utf-8")
    return path


def test_cli_steer_writes_ranked_experts_and_experiment(checkpoint, tmp_path, capsys):
    a, b = write_jsonl(tmp_path / "a.jsonl", GERMAN), write_jsonl(tmp_path / "b.jsonl", ENGLISH)
    out = tmp_path / "out"
    code = main(["steer", "--model", str(checkpoint), "--a", str(a), "--b", str(b), "--top", "3",
                 "--out", str(out), "--seeds", "2", "--max-new-tokens", "4", "--prompt-tokens", "6",
                 "--permutations", "100", "--quiet"])
    assert code == 0
    experts = pd.read_csv(out / "experts.csv")
    assert {"layer", "expert", "effect", "p"} <= set(experts.columns)
    assert len(experts) == 2 * 8 and experts.t.is_monotonic_decreasing
    assert experts.p.between(0, 1).all()
    experiment = pd.read_csv(out / "experiment.csv")
    assert experiment.condition.tolist() == ["baseline", "top_off", "random_off", "random_off", "top_on"]
    assert experiment.seed.tolist() == [-1, -1, 0, 1, -1]
    assert experiment.rate.between(0, 1).all()
    top = " ".join(f"L{r.layer}/E{r.expert}" for r in experts.head(3).itertuples())
    assert experiment.experts.iloc[1] == top
    assert "ppl_b" in experiment.columns
    printed = capsys.readouterr().out
    assert "top_off" in printed
    header = next(line for line in printed.splitlines() if line.startswith("condition"))
    assert header.split() == ["condition", "runs", "rate", "95%", "CI", "change", "ppl_b"]  # named as in the CSVs


def test_cli_steer_bad_input_is_a_clear_error(checkpoint, tmp_path, capsys):
    a = tmp_path / "a.jsonl"
    a.write_text('{"txt": "no text field"}\n')
    b = write_jsonl(tmp_path / "b.jsonl", ENGLISH)
    code = main(["steer", "--model", str(checkpoint), "--a", str(a), "--b", str(b), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "'text'" in capsys.readouterr().err


def test_steer_sets_steers_only_experts_set_a_uses_more(tiny):
    """Regression: the first `top` rows of the table were steered even when some had t <= 0."""
    from workbench.steering.pipeline import steer_sets
    lm = tiny("mixtral")
    a = ["the cat sat on the mat today", "the dog ran to the park now", "a bird sang in the tree"]
    b = ["def f(x): return x", "for i in range(3): print(i)", "import os, sys"]
    contrast, experiment = steer_sets(lm, a, b, top=8, seeds=(0,), max_new_tokens=2, permutations=50)
    positive = {(int(r.layer), int(r.expert)) for r in contrast.table.itertuples() if r.t > 0}
    steered = {tuple(int(x) for x in pair) for pair in experiment.top}
    assert steered and steered <= positive
    assert len(steered) == min(8, len(positive))


def test_cli_steer_steermoe_preset(checkpoint, tmp_path, capsys):
    a, b = write_jsonl(tmp_path / "a.jsonl", GERMAN), write_jsonl(tmp_path / "b.jsonl", ENGLISH)
    out = tmp_path / "out"
    code = main(["steer", "--model", str(checkpoint), "--a", str(a), "--b", str(b), "--top", "3", "--preset",
                 "steermoe", "--activate", "2", "--out", str(out), "--seeds", "2", "--max-new-tokens", "3",
                 "--prompt-tokens", "6", "--permutations", "20", "--quiet"])
    assert code == 0
    experts = pd.read_csv(out / "experts.csv")
    assert experts.risk_diff.is_monotonic_decreasing and "t" in experts.columns
    experiment = pd.read_csv(out / "experiment.csv")
    assert experiment.condition.tolist() == ["baseline", "switch", "random_switch", "random_switch"]
    switched = experiment.experts.iloc[1].split()
    off = [f"-L{r.layer}/E{r.expert}" for r in experts.head(3).itertuples()]
    assert [x for x in switched if x.startswith("-")] == off
    assert 1 <= sum(x.startswith("+") for x in switched) <= 2
    settings = json.loads((out / "settings.json").read_text())
    assert settings["preset"] == "steermoe"
    assert "effect switch - random_switch" in capsys.readouterr().out
