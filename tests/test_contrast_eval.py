"""SCMoE evaluation harness and command line: answer extraction, task files, summary.csv."""

import json

import pandas as pd
import pytest

from workbench.cli import main
from workbench.contrast.evaluate import GREEDY, evaluate, extract_answer, gold_answer, grid, read_tasks, scmoe

TASKS = [{"prompt": "12 + 34 =", "answer": "46"}, {"prompt": "20 + 30 =", "answer": "#### 50"},
         {"prompt": "5 + 7 =", "answer": "12"}]


@pytest.mark.parametrize("text, expected", [
    ("The answer is 12.\n#### 1,234", "1234"),
    ("so 3 + 4 = 7 and then 9", "9"),
    (" 82\n", "82"),
    ("costs $5.50 in total", "5.5"),
    ("-3 degrees", "-3"),
    ("82.0", "82"),
    ("nothing", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_gold_answer_reduces_solutions():
    assert gold_answer("He has 3 + 4 = 7.\n#### 7") == "7"
    assert gold_answer("46") == "46"


def test_read_tasks_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1 + 1 ="}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: each line needs a 'prompt' and an 'answer'"):
        read_tasks(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_tasks(bad)
    with pytest.raises(FileNotFoundError):
        read_tasks(tmp_path / "missing.jsonl")


def test_evaluate_scores_every_method_interleaved(tiny):
    lm = tiny("qwen3_moe")
    methods = [GREEDY, scmoe(beta=1.0, weak="top1", name="scmoe-top1"), scmoe(beta=0.0, name="scmoe-b0")]
    result = evaluate(lm, TASKS, methods, max_new_tokens=4, progress=False)
    out = result.outputs
    assert len(out) == len(TASKS) * len(methods)
    # each row's verdict is the extraction compared with the gold answer
    for row in out.itertuples():
        assert row.correct == (extract_answer(row.output) == gold_answer(row.answer))
    summary = result.summary().set_index("method")
    assert list(summary.index) == ["greedy", "scmoe-top1", "scmoe-b0"]
    for name in summary.index:
        part = out[out.method == name]
        assert summary.loc[name, "accuracy"] == pytest.approx(part.correct.mean())
        assert summary.loc[name, "ms_per_token"] == pytest.approx(1000 * part.seconds.sum() / part.tokens.sum())
    # beta = 0 reproduces greedy output for output
    g, b0 = out[out.method == "greedy"].output.tolist(), out[out.method == "scmoe-b0"].output.tolist()
    assert g == b0
    paired = result.compare().set_index("method")
    assert paired.loc["scmoe-b0", ["fixed", "broken"]].tolist() == [0, 0]
    delta = summary.loc["scmoe-top1", "accuracy"] - summary.loc["greedy", "accuracy"]
    assert paired.loc["scmoe-top1", "delta"] == pytest.approx(delta)


def test_grid_names_are_unique():
    names = [m.name for m in grid()]
    assert names[0] == "greedy" and len(set(names)) == len(names) == 10


def test_cli_writes_outputs_and_summary(tiny, tmp_path, capsys):
    from workbench.testing import tiny_model

    model, tok = tiny_model("mixtral")
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(json.dumps(t) for t in TASKS) + "\n")
    out = tmp_path / "out"
    code = main(["contrast", "--model", str(ckpt), "--tasks", str(tasks), "--out", str(out),
                 "--max-new-tokens", "4", "--stop", "\\n", "--quiet"])
    assert code == 0
    summary = pd.read_csv(out / "summary.csv")
    assert summary.method.tolist() == ["greedy", "scmoe"]
    assert {"accuracy", "ms_per_token"} <= set(summary.columns)
    assert summary.ms_per_token.gt(0).all() and summary.accuracy.between(0, 1).all()
    rows = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(TASKS) and all("\n" not in r["output"] for r in rows)
    assert "summary.csv" in capsys.readouterr().out


def test_cli_reports_a_bad_task_file(tmp_path, capsys):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"text": "no prompt"}\n')
    from workbench.testing import tiny_model

    model, tok = tiny_model("olmoe")
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    code = main(["contrast", "--model", str(tmp_path / "ckpt"), "--tasks", str(tasks), "--out",
                 str(tmp_path / "out"), "--quiet"])
    assert code == 2 and "'prompt' and an 'answer'" in capsys.readouterr().err
