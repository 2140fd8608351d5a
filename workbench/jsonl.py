"""Reading the JSONL files users hand to the workbench (texts, labelled texts, task files).

One reader for every command, so that every bad file gets the same kind of message: which file,
which line, and what that line needs.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "texts.jsonl"
    >>> _ = path.write_text('{"text": "Der Fuchs", "label": "german"}\\n\\n{"text": "def f(): pass"}\\n')
    >>> [row["text"] for row in read_jsonl(path, required=("text",))]
    ['Der Fuchs', 'def f(): pass']
    >>> read_texts(path)
    (['Der Fuchs', 'def f(): pass'], ['german', None])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


#: What a texts file is, for the messages about a wrong one.
TEXTS_HINT = 'a .txt file (one text a line) or a .jsonl file (one {"text": ..., "label": ...} a line)'


def check_file(path, what: str) -> Path:
    """``path`` as a Path, when it is an existing file; else one line saying what is wrong and what to give.

    Raises:
        FileNotFoundError: nothing is there.
        IsADirectoryError: a folder is there.

    Example:
        >>> check_file("./no/such.txt", "a .txt file")
        Traceback (most recent call last):
        ...
        FileNotFoundError: ./no/such.txt does not exist; give a .txt file
    """
    shown = str(path)
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{shown} is a folder; give {what}")
    if not path.is_file():
        raise FileNotFoundError(f"{shown} does not exist; give {what}")
    return path


def read_jsonl(path, required: Sequence[str] = (), strings: Sequence[str] = (),
               what: str = "rows") -> list[dict]:
    """Every non-blank line of a JSONL file as a dict.

    Args:
        path: the file.
        required: fields every line must have.
        strings: fields (among ``required``) whose value must be a string.
        what: what the rows are, for the empty-file message (``"texts"``, ``"tasks"``).

    Returns:
        The rows, in file order.

    Raises:
        FileNotFoundError: the file does not exist (IsADirectoryError: it is a folder).
        ValueError: a line is not a JSON object, lacks a required field, or the file holds no rows;
            the message names the file and the line.
    """
    path = Path(path)
    check_file(path, f"a JSONL file of {what}, one JSON object a line")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        missing = [f for f in required if not isinstance(obj, dict) or f not in obj]
        if missing or not isinstance(obj, dict):
            need = " and ".join(repr(f) for f in required) or "a JSON object"
            raise ValueError(f"{path}:{n}: each line needs {need} (missing {missing or 'object'})")
        wrong = [f for f in strings if not isinstance(obj.get(f), str)]
        if wrong:
            raise ValueError(f"{path}:{n}: field(s) {wrong} must be strings")
        rows.append(obj)
    if not rows:
        raise ValueError(f"{path} holds no {what}")
    return rows


def read_texts(path) -> tuple[list[str], list | None]:
    """Texts (and labels) from a ``.txt`` file (one text a line) or ``.jsonl`` (``text``, ``label``).

    Returns:
        ``(texts, labels)``; ``labels`` is None when no line has a label.
    """
    path = Path(path)
    check_file(path, TEXTS_HINT)
    if path.suffix == ".jsonl":
        rows = read_jsonl(path, required=("text",), strings=("text",), what="texts")
        labels = [row.get("label") for row in rows]
        return [row["text"] for row in rows], labels if any(x is not None for x in labels) else None
    texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"{path} holds no texts")
    return texts, None
