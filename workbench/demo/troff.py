"""Turn gzipped troff man pages into plain text for the demo corpus.

The stripper is deliberately small: it keeps the words a reader sees in a rendered man page
(section headings, paragraphs, the arguments of font macros) and drops layout requests, comments,
tables of formatting commands and inline escapes. It does not need ``groff``.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

# Macros whose arguments are visible text (font switches, headings, list tags).
_TEXT_MACROS = {
    "SH", "SS", "B", "I", "BI", "BR", "IB", "IR", "RB", "RI", "SM", "SB", "TP", "IP", "TQ",
    "Nm", "Nd", "Sh", "Ss", "Fl", "Ar", "Op", "Pa", "Xr", "Em", "Dq", "Sq", "Ql", "Li", "Cm",
    "Va", "Fn", "Fa", "Ev", "Dv", "Er", "Ic", "It", "Ql", "UR", "MT",
}
# Macros that end a paragraph.
_BREAK_MACROS = {"PP", "P", "LP", "sp", "br", "Pp", "TP", "IP", "SH", "SS", "Sh", "Ss"}

_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),        # font changes \fB \f(CW \f[B]
    (re.compile(r"\\s[+-]?\d+"), ""),                      # size changes \s-1
    (re.compile(r"\\\*(\[[^\]]*\]|\(..|.)"), ""),       # string registers \*(lq
    (re.compile(r"\\n(\[[^\]]*\]|\(..|.)"), ""),        # number registers
    (re.compile(r"\\[kvhwlLxo]'[^']*'"), ""),              # motions, widths
    (re.compile(r"\\\((lq|rq|dq)"), '"'),
    (re.compile(r"\\\((oq|cq|aq)"), "'"),
    (re.compile(r"\\\((em|en|hy|mi)"), "-"),
    (re.compile(r"\\\(bu"), "*"),
    (re.compile(r"\\\(co"), "(c)"),
    (re.compile(r"\\\(.."), ""),                            # other special characters
    (re.compile(r"\\\[[^\]]*\]"), ""),
    (re.compile(r"\\[-]"), "-"),
    (re.compile(r"\\[e\\]"), "\\\\"),
    (re.compile(r"\\[&|^%c:!0)dtu~ ]"), lambda m: " " if m.group(0) in ("\\ ", "\\~", "\\0") else ""),
    (re.compile(r"\\."), ""),                               # anything left
]


def _unescape(text: str) -> str:
    for pattern, repl in _ESCAPES:
        text = pattern.sub(repl, text)
    return text


def _macro_args(rest: str) -> str:
    """Join the (possibly quoted) arguments of a macro line into words."""
    parts = re.findall(r'"([^"]*)"|(\S+)', rest)
    return " ".join(a or b for a, b in parts)


def troff_to_text(source: str) -> str:
    """Strip troff/man (and common mdoc) markup to plain paragraphs.

    Args:
        source: The troff source of a man page.

    Returns:
        Plain text: one paragraph per block, blank lines between paragraphs.

    Example:
        >>> troff_to_text('.TH LS 1\\n.SH NAME\\nls \\\\- list \\\\fBfiles\\\\fR\\n.PP\\nMore.')
        'NAME\\nls - list files\\n\\nMore.'
    """
    out: list[str] = []
    in_table = False
    for raw in source.splitlines():
        line = raw.rstrip()
        if line.startswith((".\\\"", "'\\\"", '\\"', ".\\#")):
            continue
        if line.startswith((".TS", ".EQ")):
            in_table = True
            continue
        if line.startswith((".TE", ".EN")):
            in_table = False
            continue
        if in_table:
            continue
        if line.startswith((".", "'")):
            m = re.match(r"[.'][ \t]*([A-Za-z]{1,3})\b(.*)", line)
            if not m:
                continue
            name, rest = m.group(1), m.group(2)
            if name in _BREAK_MACROS:
                out.append("")
            if name in _TEXT_MACROS:
                words = _unescape(_macro_args(rest)).strip()
                if words:
                    out.append(words)
                    if name in ("SH", "SS", "Sh", "Ss"):
                        out.append("\n")
            continue
        out.append(_unescape(line))
    text = "\n".join(out)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n\n\n+", "\n\n", text)
    return text.strip().replace("NAME\n\n", "NAME\n")


def read_man_page(path: Path) -> str:
    """Read one man page file (gzipped or plain) and return its plain text.

    Pages that only include another page (``.so``) come back empty.

    Example:
        >>> import gzip, tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.1.gz"
        >>> _ = p.write_bytes(gzip.compress(b".SH NAME\\nx \\\\- demo"))
        >>> read_man_page(p)
        'NAME\\nx - demo'
    """
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError:
        source = data.decode("latin-1")
    if source.lstrip().startswith(".so ") and len(source) < 200:
        return ""
    return troff_to_text(source)
