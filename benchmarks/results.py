"""Writing one named section of benchmarks/RESULTS.md without touching the others."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(name: str, command: str, lines: list[str]) -> None:
    """Replace (or append) the section ``## name`` of RESULTS.md."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nLatest figures; each section says how to reproduce it.\n"
    stamp = datetime.date.today().isoformat()
    body = f"## {name}\n\n`{command}` ({stamp})\n\n```\n" + "\n".join(lines) + "\n```\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: body + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + body
    RESULTS.write_text(text)
