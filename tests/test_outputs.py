"""Nothing a user made is deleted or overwritten without asking."""

import numpy as np
import pytest

import workbench as wb
from workbench.cli import OUT_KIND, build_parser
from workbench.cli import main as cli_main

ARGS = {  # the smallest argument list of each command that writes --out (they are refused before running)
    "demo": [], "report": [], "steer": ["--a", "a.jsonl", "--b", "b.jsonl"], "contrast": ["--tasks", "t.jsonl"],
    "prune": ["--keep", "4"], "skip": [], "analyse": ["trace"], "embed": ["--texts", "t.txt"],
    "sql": ["trace", "--query", "SELECT 1"], "record": ["--model", "m", "--texts", "t.txt"],
}


def test_every_command_with_out_is_covered():
    commands = {name for name, sub in build_parser()._subparsers._group_actions[0].choices.items()
                if any("--out" in a.option_strings for a in sub._actions)}
    assert commands == set(OUT_KIND) == set(ARGS)


@pytest.mark.parametrize("command", sorted(c for c, kind in OUT_KIND.items() if kind != "store"))
def test_cli_refuses_a_foreign_out(command, tmp_path, capsys):
    kind = OUT_KIND[command]
    out = tmp_path / ("result.npy" if kind == "file" else "mine")
    if kind == "file":
        out.write_bytes(b"precious")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("precious")
    assert cli_main([command, *ARGS[command], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and err.count("\n") == 1
    assert (out.read_bytes() if kind == "file" else (out / "notes.txt").read_bytes()) == b"precious"


def test_cli_refuses_to_write_onto_its_input(tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("one\n")
    assert cli_main(["embed", "--texts", str(texts), "--out", str(texts), "--force"]) == 2
    assert "overlaps the input" in capsys.readouterr().err and texts.read_text() == "one\n"
    model = tmp_path / "model"
    model.mkdir()
    assert cli_main(["prune", "--model", str(model), "--keep", "2", "--out", str(model / "pruned")]) == 2
    assert "overlaps the input" in capsys.readouterr().err


def test_the_report_refuses_a_foreign_folder_and_replaces_its_own(tmp_path):
    from workbench.report import run_demo
    mine = tmp_path / "mine"
    (mine / "tables").mkdir(parents=True)
    (mine / "tables" / "thesis.csv").write_text("precious")
    with pytest.raises(FileExistsError, match="not written by the workbench"):
        run_demo(mine, sample=2, progress=False)
    assert (mine / "tables" / "thesis.csv").read_text() == "precious"


def test_pruned_checkpoints_never_land_on_their_source(tiny, tmp_path):
    from workbench.pruning.slicing import save_pruned
    lm = tiny("olmoe")
    source = tmp_path / "source"
    save_pruned(lm, source)
    loaded = wb.load(source)
    with pytest.raises(ValueError, match="overlaps the input"):
        save_pruned(loaded, source)
    foreign = tmp_path / "foreign"
    lm.model.save_pretrained(foreign)  # a checkpoint written by someone else
    with pytest.raises(FileExistsError, match="did not write"):
        save_pruned(lm, foreign)
    save_pruned(lm, tmp_path / "source2")
    save_pruned(lm, tmp_path / "source2")  # our own result is replaced, not mixed
    assert wb.load(tmp_path / "source2").num_experts == lm.num_experts


def test_trace_save_does_not_overwrite(tmp_path):
    trace = wb.RoutingTrace(np.zeros((1, 2, 1)), np.ones((1, 2, 1)), [1, 2], [0, 0], [0, 1], [0], 2, "fp")
    trace.save(tmp_path / "t")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trace.save(tmp_path / "t")
    trace.save(tmp_path / "t", overwrite=True)
    assert not list((tmp_path / "t").glob(".tmp-*"))
