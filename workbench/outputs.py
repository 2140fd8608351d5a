"""Output folders and files: written only where that is safe, never onto what a user made.

A command writes into a folder that is new, empty, or marked as the workbench's own (the marker file
:data:`MARKER` says which command made it). It refuses any other folder unless told ``force``, and it
never writes onto its own input (a checkpoint or a text file it reads). A single output file that
exists is replaced only with ``force``.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from workbench.outputs import claim_folder
    >>> d = Path(tempfile.mkdtemp())
    >>> (d / "notes.txt").write_text("mine")
    4
    >>> try:
    ...     claim_folder(d, "demo")
    ... except FileExistsError as err:
    ...     print("refused:", "not written by the workbench" in str(err))
    refused: True
    >>> claim_folder(d / "report", "demo").name
    'report'
"""

from __future__ import annotations

import json
from pathlib import Path

MARKER = ".moe-workbench"


def _resolved(path) -> Path:
    return Path(path).expanduser().resolve()


def check_not_input(out, inputs) -> None:
    """Refuse ``out`` when it is, lies inside, or holds one of ``inputs`` (paths that exist)."""
    target = _resolved(out)
    for item in inputs or ():
        if item is None or not Path(str(item)).expanduser().exists():
            continue
        source = _resolved(item)
        if target == source or source in target.parents or target in source.parents:
            raise ValueError(f"the output {out} overlaps the input {item}; write the result to another folder")


def claim_folder(out, kind: str, *, force: bool = False, inputs=(), create: bool = True) -> Path:
    """Make ``out`` ready for command ``kind`` (see the module docstring) and mark it; returns it.

    With ``create=False`` only the checks run (nothing is written); :func:`mark_folder` marks it later.
    """
    out = Path(out).expanduser()
    check_not_input(out, inputs)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; give a folder for the output")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists() and not force:
        raise FileExistsError(f"{out} is not empty and was not written by the workbench; choose an empty or new "
                              "folder, or pass force=True (--force) to write into it anyway")
    if create:
        mark_folder(out, kind)
    return out


def mark_folder(out, kind: str) -> Path:
    """Create ``out`` if needed and mark it as written by the workbench's command ``kind``."""
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    marker = out / MARKER
    if not marker.exists():
        marker.write_text(json.dumps({"written_by": "moe-workbench", "command": kind}) + "\n")
    return out


def claim_file(out, *, force: bool = False, inputs=()) -> Path:
    """Check that output file ``out`` may be written: new, or replaced with ``force``."""
    out = Path(out).expanduser()
    check_not_input(out, inputs)
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder; give a file name for the output")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; choose another name, or pass force=True (--force) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out
