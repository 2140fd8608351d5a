"""The documentation site builds strictly: ``sphinx -n -W`` (every warning, every unresolved reference fails).

The site is built from ``docs/`` (Markdown pages, the API reference from the package's docstrings, the
notebooks rendered as committed, never executed) into a temporary folder, offline. ``make docs``
builds the same site into ``site/``. Skipped only when the docs tools (the ``docs`` extra) are missing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for module in ("sphinx", "myst_nb", "furo"):
        pytest.importorskip(module, reason="the docs build needs the docs extra (pip install -e .[docs])")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-n", "-W", "--keep-going", "-q", "-E",
           "-d", str(out / "doctrees"), str(DOCS), str(out / "html")]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"the docs build failed (make docs):\n{run.stderr[-6000:]}"
    return out / "html"


@pytest.mark.slow
def test_docs_build_strictly(site):
    pages = {"index", "install", "notebooks", "supported_models", "store", "vllm", "methods_pruning",
             "methods_steering", "methods_contrast", "methods_embeddings", "api/index", "api/workbench"}
    pages |= {f"notebooks/{name}" for name in NOTEBOOKS}
    missing = sorted(p for p in pages if not (site / f"{p}.html").is_file())
    assert not missing, f"pages not built: {missing}"


@pytest.mark.slow
def test_api_reference_covers_the_public_api(site):
    import workbench as wb

    html = "".join(p.read_text(encoding="utf-8") for p in (site / "api").glob("*.html"))
    anchors = set(re.findall(r'id="(workbench\.[\w.]+)"', html))
    public = {f"workbench.{name}" for name in ("load", "record", "edit", "Mask", "Force", "KeepRank", "TopK",
                                                "TopP", "Skip", "Offset", "MoEModel")}
    for package in ("store", "analysis", "views", "widgets", "pruning", "steering", "contrast", "embeddings",
                    "engine"):
        module = __import__(f"workbench.{package}", fromlist=["__all__"])
        public |= {f"workbench.{package}.{name}" for name in module.__all__ if callable(getattr(module, name))}
    assert public <= anchors, f"not in the API reference: {sorted(public - anchors)}"
    assert wb.__version__ in (site / "index.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_notebooks_are_rendered_not_executed(site):
    for name in NOTEBOOKS:
        page = re.sub(r"<[^>]+>", "", (site / "notebooks" / f"{name}.html").read_text(encoding="utf-8"))
        assert "import workbench" in page or "from workbench" in page, name
        assert "Traceback" not in page, name  # no outputs: the committed notebooks are clean


def test_the_build_fetches_nothing():
    import importlib.util

    pytest.importorskip("sphinx", reason="the docs build needs the docs extra (pip install -e .[docs])")
    spec = importlib.util.spec_from_file_location("workbench_docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    assert "sphinx.ext.intersphinx" not in conf.extensions  # inventories come from the network
    assert conf.nb_execution_mode == "off"  # notebooks are shown as committed, never run
