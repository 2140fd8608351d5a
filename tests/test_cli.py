"""``python -m workbench``: help texts, one-line errors, the contrast defaults, the report and analyse commands."""

from __future__ import annotations

import argparse
import json

import pandas as pd
import pytest

import workbench as wb
from workbench import cli
from workbench.cli import build_parser, main
from workbench.testing import save_tiny_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_model("qwen3_moe", tmp_path_factory.mktemp("ckpt") / "tiny")


def subcommands(parser=None) -> dict:
    parser = parser or build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subs.choices)


def test_every_option_of_every_command_says_its_default():
    parser = build_parser()
    missing = []
    for name, sub in [("", parser)] + list(subcommands(parser).items()):
        formatter = sub._get_formatter()
        required_groups = {id(a) for g in sub._mutually_exclusive_groups if g.required for a in g._group_actions}
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append((name, action.dest, "no help text"))
            elif action.option_strings and not action.required and id(action) not in required_groups:
                if "(default" not in formatter._get_help_string(action):
                    missing.append((name, action.dest, action.help))
        sub.format_help()  # every help text formats (no stray % signs)
    assert not missing, missing


def test_help_texts_are_plain_and_true(capsys):
    top = build_parser().format_help()
    assert "``" not in top and "`" not in top
    assert "report" in top and "contrast" in top
    subs = subcommands()
    assert "--method" not in subs["skip"].format_help()  # skip has no --method
    assert "--method random" in subs["prune"].format_help()
    help_text = " ".join(subs["contrast"].format_help().split())
    assert "(default: 1)" in help_text and "--threads" in help_text and "(default: demo)" in help_text
    assert "(default: 4)" in " ".join(subs["prune"].format_help().split())  # the notebook's calibration size
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "--texts" in capsys.readouterr().out


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


def test_wrong_model_paths_are_one_line_errors(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    texts = tmp_path / "t.txt"
    texts.write_text("one\ntwo\n")
    (tmp_path / "models").mkdir()
    for source in ("./nowhere/model", "typo", "models/typo", str(tmp_path / "models" / "typo"), "a/b/c", str(texts)):
        err = _error(capsys, ["info", "--model", source])
        assert source in err
        if source != str(texts):
            assert 'pass "demo", an existing folder, or a hub id' in err
    err = _error(capsys, ["record", "--model", "./foo", "--texts", str(texts), "--out", str(tmp_path / "o")])
    assert "no checkpoint folder at ./foo" in err
    err = _error(capsys, ["report", "--model", "./foo", "--texts", str(texts), "--out", str(tmp_path / "r")])
    assert "no checkpoint folder at ./foo" in err
    assert not (tmp_path / "r").exists()  # refused before anything was written
    # a hub id is looked up (offline in the tests): still one line
    assert "could not load 'no-such-org/no-such-model'" in _error(capsys, ["info", "--model",
                                                                          "no-such-org/no-such-model"])


def test_a_hub_id_without_network_fails_at_once_saying_why(capsys, monkeypatch):
    from huggingface_hub import constants

    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as on a user's machine: the hub is tried
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    err = _error(capsys, ["info", "--model", "no-such-org/no-such-model"])
    assert "not in the local hub cache" in err and "http://127.0.0.1:9 cannot be reached" in err


@pytest.mark.parametrize("argv", [
    ["record", "--model", "demo", "--texts", "{bad}", "--out", "{out}"],
    ["report", "--texts", "{bad}", "--out", "{out}"],
    ["embed", "--texts", "{bad}", "--out", "{out}.npy"],
    ["prune", "--texts", "{bad}", "--keep", "4", "--out", "{out}"],
    ["skip", "--texts", "{bad}", "--out", "{out}"],
    ["steer", "--a", "{bad}", "--b", "{bad}", "--out", "{out}"],
    ["contrast", "--tasks", "{bad}", "--out", "{out}"],
])
def test_wrong_input_files_are_one_line_errors(capsys, tmp_path, argv):
    missing = tmp_path / "inputs" / "missing.jsonl"
    folder = tmp_path / "inputs" / "folder"
    folder.mkdir(parents=True)
    for bad, says in ((missing, "does not exist; give a"), (folder, "is a folder; give a")):
        args = [a.replace("{bad}", str(bad)).replace("{out}", str(tmp_path / "out")) for a in argv]
        err = _error(capsys, args)
        assert str(bad) in err and says in err
    assert not (tmp_path / "out").exists()


def test_bad_lines_and_traceback_flag(capsys, tmp_path):
    texts = tmp_path / "t.jsonl"
    texts.write_text('{"text": "fine"}\n{"txt": "no text"}\n')
    err = _error(capsys, ["embed", "--texts", str(texts), "--out", str(tmp_path / "e.npy")])
    assert "t.jsonl:2" in err
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        main(["--traceback", "info", "--model", "./nowhere"])


def test_one_line_joins_multi_line_messages_and_unquotes_key_errors():
    assert cli.one_line(ValueError("first\n  second\n")) == "first second"
    assert cli.one_line(KeyError("layer 9 was not recorded")) == "layer 9 was not recorded"


def test_contrast_settings_follow_the_answers(tiny):
    from workbench.contrast.evaluate import demo_tasks

    lm = tiny("qwen3_moe")
    stop, tokens, why = cli.task_settings(wb.load("demo"), demo_tasks())
    assert (stop, tokens, why) == (["\n"], 6, "one-line answers")  # the notebook's settings on the demo sums
    gsm = [{"prompt": "Q: ...", "answer": "She has 3 + 4 = 7 apples.\n#### 7"}]
    assert cli.task_settings(lm, gsm) == (["\n\n"], 256, "worked solutions")
    assert cli.task_settings(lm, gsm, ["Question:"], 100)[:2] == (["Question:"], 100)
    assert cli.task_settings(lm, gsm, [], None)[0] is None  # --no-stop


def test_contrast_command_defaults_and_threads(checkpoint, tmp_path, capsys):
    import torch

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(json.dumps({"prompt": f"{a} + {b} =", "answer": str(a + b)})
                               for a, b in [(1, 2), (30, 4), (12, 13)]) + "\n")
    before = torch.get_num_threads()
    out = tmp_path / "out"
    assert main(["contrast", "--model", str(checkpoint), "--tasks", str(tasks), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "stop at '\\n'" in printed and "at most 6 new tokens" in printed and "1 CPU thread(s)" in printed
    assert torch.get_num_threads() == before  # restored after the timing
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == ["method", "weak", "alpha", "beta", "accuracy", "n", "tokens", "ms_per_token"]
    outputs = pd.read_json(out / "outputs.jsonl", lines=True)
    assert len(outputs) == 6 and (outputs.tokens <= 6).all()
    assert not outputs.output.str.contains("\n").any()  # stopped at the newline (which is not kept)
    err = _error(capsys, ["contrast", "--model", str(checkpoint), "--tasks", str(tasks), "--out",
                          str(tmp_path / "o2"), "--threads", "-1"])
    assert "--threads" in err


@pytest.fixture(scope="module")
def store(checkpoint, tmp_path_factory):
    lm = wb.load(checkpoint)
    out = tmp_path_factory.mktemp("store") / "trace"
    wb.record(lm, ["the cat sat on the mat", "def f(x): return x + 1", "Der Hund schläft."],
              labels=["en", "code", "de"], out=out, progress=False)
    return out


def test_analyse_writes_self_explaining_columns(store, tmp_path, capsys):
    out = tmp_path / "tables"
    assert main(["analyse", str(store), "--out", str(out), "--quiet"]) == 0
    names = {p.stem for p in out.glob("*.csv")}
    assert {"expert_load", "coactivation", "label_specialization", "layer_transitions"} <= names
    for path in out.glob("*.csv"):
        columns = pd.read_csv(path).columns
        assert all(len(c) > 1 for c in columns), (path.name, list(columns))  # no one-letter column names
    coact = pd.read_csv(out / "coactivation.csv")
    assert {"expert_a", "expert_b", "p_b_given_a"} <= set(coact.columns)
    assert "written:" in capsys.readouterr().out


@pytest.mark.slow
def test_report_command_on_a_texts_file(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CHROMIUM", "none")  # HTML and CSV only (faster)
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat on the mat\ndef f(x): return x + 1\n¿Dónde está la biblioteca?\n",
                     encoding="utf-8")
    out = tmp_path / "report"
    assert main(["report", "--model", str(checkpoint), "--texts", str(texts), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "[6/6] index.html" in printed and str(texts) in printed
    assert (out / "index.html").is_file() and (out / "figures" / "load.html").is_file()
    tables = {p.stem for p in (out / "tables").glob("*.csv")}
    assert {"expert_load", "coactivation", "router_entropy", "norm_rank_table"} <= tables
    assert "expert_a" in pd.read_csv(out / "tables" / "coactivation.csv").columns
    trace = wb.open_trace(out / "trace")
    assert trace.num_docs == 3 and trace.has_scores
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "no labels" in index
    # the folder is the workbench's now: a second run replaces it
    assert main(["report", "--model", str(checkpoint), "--texts", str(texts), "--out", str(out), "--quiet",
                 "--sample", "2"]) == 0
    assert wb.open_trace(out / "trace").num_docs == 2


def test_report_refuses_a_foreign_folder(checkpoint, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    texts = tmp_path / "texts.txt"
    texts.write_text("one\ntwo\n")
    err = _error(capsys, ["report", "--model", str(checkpoint), "--texts", str(texts), "--out", str(out)])
    assert "not empty" in err
