"""Bad input gets a clear error that says what is wrong and what to do."""

import json

import pytest

import workbench as wb
from workbench.cli import main as cli_main
from workbench.testing import save_tiny_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_model("olmoe", tmp_path_factory.mktemp("ckpt") / "olmoe")


@pytest.mark.parametrize("kwargs,error,match", [
    ({"labels": "code"}, TypeError, "not one string"),
    ({"labels": ["a"]}, ValueError, "one label per text"),
    ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
    ({"batch_size": 2.5}, ValueError, "batch_size"),
    ({"max_length": 0}, ValueError, "max_length must be a positive integer"),
    ({"max_length": 100_000}, ValueError, "longer than the model's context"),
])
def test_record_refuses_bad_arguments(tiny, kwargs, error, match):
    with pytest.raises(error, match=match):
        wb.record(tiny("olmoe"), ["one", "two"], progress=False, **kwargs)


@pytest.mark.parametrize("texts,match", [(["fine", "a\0b"], "text 1 contains a NUL character at position 1"),
                                         (["bad \ud800 text"], "text 0 contains a lone surrogate")])
def test_record_names_the_text_with_bad_characters(tiny, texts, match):
    with pytest.raises(ValueError, match=match):
        wb.record(tiny("olmoe"), texts, progress=False)


def test_load_says_what_is_wrong_with_the_source(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint folder at ./nowhere/model"):
        wb.load("./nowhere/model")
    with pytest.raises(FileNotFoundError, match="could not load 'some-org/some-model'"):
        wb.load("some-org/some-model")
    with pytest.raises(ValueError, match="source is empty"):
        wb.load("  ")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((checkpoint / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no .safetensors weights"):
        wb.load(empty)
    cut = tmp_path / "cut"
    cut.mkdir()
    for f in checkpoint.iterdir():
        (cut / f.name).write_bytes(f.read_bytes())
    weights = next(cut.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{weights.name} is truncated"):
        wb.load(cut)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for f in checkpoint.iterdir():
        (wrong / f.name).write_bytes(f.read_bytes())
    config = json.loads((wrong / "config.json").read_text())
    config["num_experts"] = config["num_experts"] * 2
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match its config"):
        wb.load(wrong)
    assert wb.load(checkpoint).num_experts == 8  # the intact checkpoint still loads


def test_wrap_refuses_a_string_and_a_bad_k():
    with pytest.raises(TypeError, match=r"wb.load\('mixtral'\)"):
        wb.wrap("mixtral")
    import transformers
    from workbench.testing import COMMON
    for k in (0, 9):
        config = transformers.MixtralConfig(**dict(COMMON, num_local_experts=8, num_experts_per_tok=k,
                                                   intermediate_size=24))
        with pytest.raises(ValueError, match=f"k={k} experts per token of E=8"):
            wb.wrap(transformers.MixtralForCausalLM(config))


def test_cli_errors_are_one_line(checkpoint, tmp_path, capsys):
    texts = tmp_path / "t.txt"
    texts.write_text("one\ntwo\n")
    assert cli_main(["record", "--model", "./missing/model", "--texts", str(texts), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no checkpoint folder" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert cli_main(["skip", "--model", str(checkpoint), "--texts", str(texts), "--out", str(tmp_path / "s"),
                     "--scale", "-1"]) == 2
    assert "scale must be a finite number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before anything ran


def test_steering_rankings_are_refused_on_another_model(tiny):
    from workbench import steering
    lm, other = tiny("mixtral"), tiny("olmoe")
    sets = {"a": ["the cat sat on the mat", "a dog ran home"], "b": ["def f(x):", "return x + 1"]}
    contrast = steering.find_experts(lm, sets, a="a", b="b", permutations=50)
    top = contrast.top(2) or steering.contrast.RankedExperts([(0, 0)], fingerprint=contrast.fingerprint)
    assert top.fingerprint == lm.fingerprint
    with pytest.raises(wb.TraceMismatchError, match="ranked on another model"):
        with steering.steer(other, top, "off"):
            pass


def test_decoding_never_runs_past_the_context(tiny):
    from workbench import steering
    from workbench.contrast.decode import generate, generate_greedy
    lm = tiny("mixtral")  # 256 positions
    long = "word " * 300
    for run in (lambda: generate(lm, long, max_new_tokens=4), lambda: generate_greedy(lm, "hi", max_new_tokens=300),
                lambda: steering.generate(lm, [long], max_new_tokens=2)):
        with pytest.raises(ValueError, match="more than the model's context of 256"):
            run()
