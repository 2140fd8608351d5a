"""Readers for the text sources of the demo corpus, with provenance and licences.

Every source is something a fresh Debian machine with PyPI access can install: the running
interpreter's standard library, Debian text packages, the ``chatterbot-corpus`` wheel from PyPI.
Each reader yields ``(doc_id, text)`` pairs; a reader whose Debian package is absent raises
:class:`SourceMissing` naming the package to install.
"""

from __future__ import annotations

import gzip
import re
import sysconfig
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from workbench.demo.troff import read_man_page

FORTUNE_DIR = Path("/usr/share/games/fortunes")
MAN_DIR = Path("/usr/share/man")


class SourceMissing(RuntimeError):
    """A corpus source is not installed; the message names the package to install."""


@dataclass(frozen=True)
class Source:
    """One corpus source: where it comes from, under which licence, and which domain it feeds."""

    name: str
    domain: str
    package: str  # Debian package, "pypi:<name>" or "python"
    licence: str
    provenance: str


SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("python-stdlib", "code", "python", "PSF-2.0",
           "Python standard-library *.py source of the running interpreter (sysconfig 'stdlib')"),
    Source("fortunes-en", "english", "fortunes", "public domain / BSD-4-clause (fortune-mod)",
           "Debian package fortunes: /usr/share/games/fortunes/*"),
    Source("jargon", "english", "jargon-text", "public domain",
           "Debian package jargon-text: The Jargon File 4.4.7 (jargon.txt.gz)"),
    Source("devil", "english", "dict-devil", "public domain",
           "Debian package dict-devil: Ambrose Bierce, The Devil's Dictionary (devil.dict.dz)"),
    Source("man-en", "english", "manpages", "various free licences (see each page)",
           "English man pages under /usr/share/man/man[1-8] (manpages and installed packages)"),
    Source("man-de", "german", "manpages-de", "GPL-3.0+ (translations)",
           "Debian package manpages-de: /usr/share/man/de"),
    Source("fortunes-de", "german", "fortunes-de", "GPL-2.0+",
           "Debian package fortunes-de: /usr/share/games/fortunes/de"),
    Source("man-fr", "french", "manpages-fr", "GPL-3.0+ (translations)",
           "Debian package manpages-fr: /usr/share/man/fr"),
    Source("man-es", "spanish", "manpages-es", "GPL-3.0+ (translations)",
           "Debian package manpages-es: /usr/share/man/es"),
    Source("fortunes-es", "spanish", "fortunes-es", "GPL-2.0+",
           "Debian package fortunes-es: /usr/share/games/fortunes/es"),
    Source("man-it", "italian", "manpages-it", "GPL-3.0+ (translations)",
           "Debian package manpages-it: /usr/share/man/it"),
    Source("fortunes-it", "italian", "fortunes-it", "GPL-2.0+",
           "Debian package fortunes-it: /usr/share/games/fortunes/it"),
    Source("chatterbot", "dialog", "pypi:chatterbot-corpus==1.3.3", "BSD-3-Clause",
           "PyPI chatterbot-corpus 1.3.3 conversations (en, de, fr, es, it, pt), read from the wheel"),
    Source("arithmetic", "arithmetic", "synthetic", "CC0 (generated)",
           "workbench.demo.synthetic: two-digit additions 'a + b = c', seeded"),
    Source("records", "data", "synthetic", "CC0 (generated)",
           "workbench.demo.synthetic: JSON records and CSV tables, seeded"),
]}

# Headings after which translated man pages carry the same translator boilerplate.
_TRANSLATION_HEADINGS = re.compile(r"\n(ÜBERSETZUNG|TRADUCTION|TRADUCCIÓN|TRADUZIONE)\n")
CHATTERBOT_LANGUAGES = ("english", "german", "french", "spanish", "italian", "portuguese")


def _require(path: Path, package: str) -> None:
    if not path.exists():
        raise SourceMissing(
            f"{path} not found: install the Debian package '{package}' "
            f"(sudo apt-get install {package}, or run scripts/system-deps.sh)")


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_stdlib() -> Iterator[tuple[str, str]]:
    """Python standard-library modules (tests and vendored packages left out)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "ensurepip")
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in skip or part.startswith("test") for part in rel.parts):
            continue
        text = _decode(path.read_bytes())
        if len(text) > 200:
            yield f"stdlib/{rel}", text


def read_fortunes(sub: str, package: str) -> Iterator[tuple[str, str]]:
    """Fortune cookie files (``%``-separated); ``sub`` is '' for English or 'de', 'es', 'it'."""
    root = FORTUNE_DIR / sub if sub else FORTUNE_DIR
    _require(root, package)
    for path in sorted(root.iterdir()):
        if path.is_dir() or path.suffix in (".dat", ".u8") or path.is_symlink():
            continue
        if any(w in path.name for w in ("art", "banner", "off")):
            continue
        cookies = [c.strip() for c in _decode(path.read_bytes()).split("\n%\n")]
        for i, cookie in enumerate(c for c in cookies if c):
            yield f"fortunes/{sub or 'en'}/{path.name}/{i}", cookie


def read_jargon() -> Iterator[tuple[str, str]]:
    """Entries of the Jargon File (split at entry headings ``:term:``)."""
    path = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
    _require(path, "jargon-text")
    text = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
    text = re.sub(r"[│├┤┼─┌┐└┘┬┴]+", " ", text)
    text = re.sub(r"(?m)^   ", "", text)
    for i, chunk in enumerate(re.split(r"\n(?=:[^:\n]{1,60}:)", text)):
        chunk = re.sub(r"[ \t]+", " ", chunk).strip()
        lines = [ln for ln in chunk.splitlines() if ln.strip()]
        if len(chunk) > 80 and len(chunk) / max(1, len(lines)) > 30:  # not an index of headwords
            yield f"jargon/{i}", chunk


def read_devil() -> Iterator[tuple[str, str]]:
    """Definitions of The Devil's Dictionary (dictzip is gzip-compatible)."""
    path = Path("/usr/share/dictd/devil.dict.dz")
    _require(path, "dict-devil")
    text = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
    for i, chunk in enumerate(re.split(r"\n\n(?=[A-Z][A-Z' -]+, )", text)):
        chunk = re.sub(r"[ \t]+", " ", chunk).strip()
        if len(chunk) > 40 and "00-database" not in chunk:
            yield f"devil/{i}", chunk


def read_man(lang: str, package: str) -> Iterator[tuple[str, str]]:
    """Man pages of one language ('' for English), markup stripped, translator boilerplate cut."""
    root = MAN_DIR / lang if lang else MAN_DIR
    _require(root, package)
    for path in sorted(root.glob("man[1-8]/*")):
        if path.is_symlink() or not path.is_file():
            continue
        text = read_man_page(path)
        text = _TRANSLATION_HEADINGS.split(text, maxsplit=1)[0].strip()
        if len(text) > 200:
            yield f"man/{lang or 'en'}/{path.parent.name}/{path.name}", text


def _chatterbot_wheel() -> Path | None:
    here = Path(__file__).resolve().parent / "_work"
    found = sorted(here.glob("chatterbot_corpus-1.3.3-*.whl"))
    return found[0] if found else None


def read_chatterbot() -> Iterator[tuple[str, str]]:
    """Conversations of chatterbot-corpus (installed package, or the wheel in ``demo/_work``)."""
    import yaml

    files: list[tuple[str, bytes]] = []
    try:
        import chatterbot_corpus  # type: ignore[import-not-found]

        root = Path(chatterbot_corpus.__file__).parent / "data"
        files = [(str(p.relative_to(root)), p.read_bytes()) for p in sorted(root.rglob("*.yml"))]
    except ImportError:
        wheel = _chatterbot_wheel()
        if wheel is None:
            raise SourceMissing(
                "chatterbot-corpus not found: pip install 'moe-workbench[train]' (chatterbot-corpus"
                "==1.3.3) or `pip download --no-deps chatterbot-corpus==1.3.3 -d workbench/demo/_work`")
        with zipfile.ZipFile(wheel) as z:
            files = [(n.split("data/", 1)[-1], z.read(n)) for n in sorted(z.namelist())
                     if n.endswith(".yml")]
    for rel, data in files:
        if rel.split("/")[0] not in CHATTERBOT_LANGUAGES:
            continue
        doc = yaml.safe_load(_decode(data)) or {}
        for i, conv in enumerate(doc.get("conversations") or []):
            turns = [str(t).strip() for t in conv if t is not None]
            if len(turns) >= 2:
                lines = [f"{'AB'[j % 2]}: {t}" for j, t in enumerate(turns)]
                yield f"chatterbot/{rel}/{i}", "\n".join(lines)


def read_source(name: str) -> Iterator[tuple[str, str]]:
    """Yield ``(doc_id, text)`` for one non-synthetic source of :data:`SOURCES`.

    Raises:
        SourceMissing: the source's package is not installed (the message names it).

    Example:
        >>> doc_id, text = next(read_source("python-stdlib"))
        >>> doc_id.startswith("stdlib/") and len(text) > 200
        True
    """
    readers = {
        "python-stdlib": read_stdlib,
        "fortunes-en": lambda: read_fortunes("", "fortunes"),
        "jargon": read_jargon,
        "devil": read_devil,
        "man-en": lambda: read_man("", "manpages"),
        "man-de": lambda: read_man("de", "manpages-de"),
        "fortunes-de": lambda: read_fortunes("de", "fortunes-de"),
        "man-fr": lambda: read_man("fr", "manpages-fr"),
        "man-es": lambda: read_man("es", "manpages-es"),
        "fortunes-es": lambda: read_fortunes("es", "fortunes-es"),
        "man-it": lambda: read_man("it", "manpages-it"),
        "fortunes-it": lambda: read_fortunes("it", "fortunes-it"),
        "chatterbot": read_chatterbot,
    }
    if name not in readers:
        raise KeyError(f"unknown source {name!r}; valid: {sorted(readers)}")
    return readers[name]()
