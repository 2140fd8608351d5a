"""The one JSONL reader every command uses: rows in order, line-precise errors."""

import pytest

from workbench.jsonl import read_jsonl, read_texts


def test_rows_in_order_blank_lines_skipped(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": 1}\n\n{"text": "b"}\n', encoding="utf-8")
    assert [r["text"] for r in read_jsonl(path, required=("text",))] == ["a", "b"]
    assert read_texts(path) == (["a", "b"], [1, None])


def test_txt_one_text_a_line_and_no_labels(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("first\n\nsecond\n", encoding="utf-8")
    assert read_texts(path) == (["first", "second"], None)


@pytest.mark.parametrize("content, message", [
    ('{"text": "a"}\n{"text": \n', "t.jsonl:2: not valid JSON"),
    ('{"text": "a"}\n{"label": "x"}\n', "t.jsonl:2: each line needs 'text'"),
    ('{"text": 3}\n', "t.jsonl:1: field(s) ['text'] must be strings"),
    ('[1, 2]\n', "t.jsonl:1: each line needs 'text'"),
    ('\n\n', "holds no texts"),
])
def test_bad_lines_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "t.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as err:
        read_jsonl(path, required=("text",), strings=("text",), what="texts")
    assert message in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_texts(tmp_path / "nope.txt")
