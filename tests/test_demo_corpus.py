"""The demo corpus builder, its sources and the demo tokenizer, on small real samples."""

from __future__ import annotations

import json
import subprocess

import pytest

from workbench.demo import DATA_DIR
from workbench.demo.corpus import build_corpus, chunk_text, read_jsonl
from workbench.demo.sources import SOURCES, SourceMissing, read_man, read_source
from workbench.demo.synthetic import arithmetic_documents, format_problem, heldout_problems
from workbench.demo.troff import troff_to_text

DEBIAN_SOURCES = [n for n, s in SOURCES.items()
                  if s.package not in ("python", "synthetic") and not s.package.startswith("pypi:")]


def _installed(package: str) -> bool:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                             capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        return False
    return "install ok installed" in out


def test_small_build_is_labelled_split_and_deterministic(tmp_path):
    domains = ("arithmetic", "data", "dialog")
    m1 = build_corpus(tmp_path / "a", seed=3, mb_per_domain=0.03, domains=domains)
    m2 = build_corpus(tmp_path / "b", seed=3, mb_per_domain=0.03, domains=domains)
    for name in ("train.jsonl", "validation.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train = read_jsonl(tmp_path / "a" / "train.jsonl")
    val = read_jsonl(tmp_path / "a" / "validation.jsonl")
    built = {d for d in domains if m1["domains"][d]["train_docs"] > 0}
    assert {"arithmetic", "data"} <= built and {r["label"] for r in train} == built
    if "dialog" not in built:  # chatterbot-corpus absent: reported, with what to install
        assert "chatterbot-corpus" in m1["missing"]["chatterbot"]
    assert not {r["id"] for r in train} & {r["id"] for r in val}
    for domain in m1["domains"]:
        info = m1["domains"][domain]
        if info["train_docs"]:
            assert 0.02e6 < info["train_chars"] + info["validation_chars"] < 0.04e6
            assert info["validation_docs"] >= 2
    # provenance and licence of every used source are recorded in the manifest
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(m2)) and manifest["sources"]["arithmetic"]["licence"]


@pytest.mark.parametrize("name", DEBIAN_SOURCES)
def test_debian_source_reads_plain_text(name):
    package = SOURCES[name].package
    if not _installed(package):
        pytest.skip(f"Debian package {package} is not installed (apt-get install {package})")
    docs = []
    for doc in read_source(name):
        docs.append(doc)
        if len(docs) == 2:
            break
    assert docs, f"{name} yielded no documents"
    for doc_id, text in docs:
        assert text.strip() and "\\fB" not in text and not text.startswith(".TH")


def test_missing_package_names_the_package():
    with pytest.raises(SourceMissing, match="manpages-xx"):
        list(read_man("xx-not-a-language", "manpages-xx"))


def test_troff_markup_is_stripped():
    src = '.TH TEST 1\n.\\" a comment\n.SH DESCRIPTION\n\\fBbold\\fR and \\fIitalic\\fP \\(em text\n'
    assert troff_to_text(src) == "DESCRIPTION\n\nbold and italic - text"


def test_chunks_respect_limit():
    text = "\n\n".join(f"paragraph {i} " * 20 for i in range(30))
    pieces = chunk_text(text, max_chars=500)
    assert all(len(p) <= 500 for p in pieces) and len(pieces) > 5
    assert "".join(p.replace("\n", "") for p in pieces).replace(" ", "") == text.replace(
        "\n", "").replace(" ", "")


def test_heldout_sums_never_in_arithmetic_documents():
    held = {format_problem(a, b) for a, b in heldout_problems()}
    lines = {ln for _, text in arithmetic_documents(3000, seed=0) for ln in text.splitlines()}
    assert len(lines) > 5000 and not held & lines
    shipped = read_jsonl(DATA_DIR / "arith_heldout.jsonl")
    assert len(shipped) >= 200
    assert {f"{p['prompt']} {p['answer']}" for p in shipped} == held
