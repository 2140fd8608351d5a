"""Every notebook in ``notebooks/`` runs top to bottom (papermill, the kernel of this Python).

On the demo model when its checkpoint is installed; otherwise the notebooks fall back to a tiny model
(see :func:`workbench.report.demo_model`). Small parameters keep the run short; notebooks without a
``parameters`` cell run as they are.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
#: Parameters that make a notebook quick in CI (by file name).
QUICK = {"01_routing.ipynb": {"sample": 18, "norm_docs_per_label": 1},
         "02_pruning_skipping.ipynb": {"calibration_per_domain": 1, "evaluation_per_domain": 1, "keeps": [12],
                                       "max_tokens": 64, "speed_tokens": 64, "speed_repeats": 1},
         "03_steering.ipynb": {"per_set": 12, "new_tokens": 8, "seeds": 1, "top": 5},
         "04_self_contrast.ipynb": {"sample": 30, "betas": [1.0], "weaks": ["rank2", "random"]},
         "05_embeddings.ipynb": {"sample": 36, "alphas": [1.0], "widget_texts": 18}}
#: Notebooks that already ran top to bottom, with these parameters and no error, in JupyterLab's own
#: kernel in this session (tests/test_browser.py runs first and adds them): not run a second time.
RAN_IN_BROWSER: set[str] = set()


def test_notebooks_are_committed_without_outputs():
    import nbformat

    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{path.name}: clear the outputs of cells {dirty} before committing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    if path.name in RAN_IN_BROWSER:
        pytest.skip(f"{path.name} ran top to bottom in JupyterLab in this session (tests/test_browser.py)")
    papermill = pytest.importorskip("papermill", reason="notebook tests need papermill (pip install -e .[notebook])")
    work = tmp_path / "notebooks"
    work.mkdir()
    shutil.copy(path, work / path.name)
    out = work / f"executed-{path.name}"
    papermill.execute_notebook(str(work / path.name), str(out), parameters=QUICK.get(path.name, {}),
                               cwd=str(work), kernel_name="python3", progress_bar=False,
                               execution_timeout=600)
    import nbformat

    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    if path.name == "01_routing.ipynb":
        mimes = [m for c in nb.cells if c.cell_type == "code" for o in c.outputs for m in o.get("data", {})]
        assert mimes.count("application/vnd.plotly.v1+json") >= 8
        assert mimes.count("application/vnd.jupyter.widget-view+json") >= 2
        text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        assert "notebook finished" in text
        assert (tmp_path / "report" / "01_routing" / "expert_load.csv").is_file()
        assert (tmp_path / "report" / "01_routing" / "trace" / "manifest.json").is_file()  # recorded into a store
