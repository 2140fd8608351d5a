"""The notebooks in a real browser: JupyterLab + headless Debian Chromium through Playwright.

Starts JupyterLab on a free localhost port (no token, no browser of its own, a temporary root and
config, no network), opens each notebook of ``notebooks/`` (with the small parameters of
``test_notebooks.QUICK``), runs every cell, and checks that plotly figures and ipywidgets rendered
without a traceback; the routing notebook gets closer checks. Screenshots are kept under
``tests/artifacts/`` (git-ignored). Playwright drives the system ``/usr/bin/chromium``; it never
downloads a browser of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab_page import (
    EMPTY_TITLES,
    open_notebook,
    rendered,
    OVERFLOWING,
    narrow_to_output_area,
    PLOTS_TITLED,
    TOKEN_MAPS,
    OUTPUT_TEXT,
    kernel_print,
    set_slider,
    wait_idle,
    close_notebook,
)
from test_notebooks import RAN_IN_BROWSER

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
NOTEBOOK = ROOT / "notebooks" / "01_routing.ipynb"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

pytestmark = [
    pytest.mark.slow, pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                       reason=f"the real-browser test needs Debian chromium at {CHROMIUM} "
                              "(sudo apt-get install chromium, or make system-deps)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}; log: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {timeout}s; log: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """A JupyterLab server over a temporary root holding a quick copy of every notebook:
    ``.url`` (its address) and ``.root`` (its folder; the notebooks write under ``root/report``)."""
    papermill = pytest.importorskip("papermill", reason="needs papermill (pip install -e .[notebook])")
    pytest.importorskip("jupyterlab", reason="needs jupyterlab (pip install -e .[notebook])")
    from test_notebooks import QUICK

    tmp_path = tmp_path_factory.mktemp("jupyterlab")
    root = tmp_path / "root"
    (root / "notebooks").mkdir(parents=True)
    for notebook in NOTEBOOKS:
        papermill.execute_notebook(str(notebook), str(root / "notebooks" / notebook.name), prepare_only=True,
                                   parameters=QUICK.get(notebook.name, {}), progress_bar=False)
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    notices = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    notices.mkdir(parents=True)
    (notices / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_DATA_DIR=str(tmp_path / "data"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"), OMP_NUM_THREADS="1")
    port = free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "browser_jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.open_browser=False",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
           "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
           f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI containers run as root
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=str(root))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_server(f"{base}/api/status", proc, log)
        yield SimpleNamespace(url=base, root=root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_routing_notebook_renders_plots_and_widgets(jupyterlab):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e .[dev])")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            console = []
            page.on("console", lambda msg: console.append(msg.text) if msg.type == "error" else None)
            path = open_notebook(page, jupyterlab.url, NOTEBOOK.name)
            page.locator(".jp-OutputArea-output", has_text="notebook finished").wait_for(timeout=300_000)
            empty, plots, tracebacks = rendered(page, sync_api)
            empty_titles = page.evaluate(EMPTY_TITLES)
            widgets = page.locator(".jupyter-widgets").count()
            token_maps = page.evaluate(TOKEN_MAPS)  # the figure cell's and the explorer's
            output_text = page.evaluate(OUTPUT_TEXT)
            explorer = page.locator(".widget-select-multiple").first
            explorer.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "browser_01_routing_explorer.png"))
            page.locator(".widget-select-multiple").first.evaluate("el => el.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "browser_01_routing_tokens.png"))
            page.locator(".jp-Notebook .jp-Cell", has_text="card = ExpertCard").first.evaluate(
                "el => el.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "browser_01_routing_card.png"))
            page.locator(".jp-Notebook .jp-Cell").nth(8).scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "browser_01_routing_figures.png"))
            # issue 18: "from token" is bounded by the document; the title keeps the label after a change
            start = page.locator(".widget-inline-hbox", has_text="from token").locator("input").first
            start.scroll_into_view_if_needed()
            start.fill("99999")
            start.press("Enter")
            wait_idle(page, path)
            clamped = int(start.input_value())
            document = page.locator(".widget-inline-hbox", has_text="document").locator("select").first
            options = document.locator("option").all_inner_texts()
            document.select_option(index=min(1, len(options) - 1))
            wait_idle(page, path)
            chosen = re.search(r"\[(.+?)\]", options[min(1, len(options) - 1)])
            titles = page.locator(".js-plotly-plot .gtitle", has_text="Experts chosen per token")
            if chosen:  # the kernel is idle; the browser may still be drawing its update
                with contextlib.suppress(sync_api.TimeoutError):
                    titles.filter(has_text=f"[{chosen.group(1)}]").last.wait_for(timeout=60_000)
            token_title = titles.last.text_content()
            all_titles = titles.all_text_contents()
            in_kernel = kernel_print(page, path, "print(explorer.doc.value, explorer.start.value, "
                                     "explorer.token_fig.layout.title.text, explorer.token_fig._view_count)")
            empty_after, _, _ = rendered(page, sync_api)
            area = narrow_to_output_area(page)
            overflowing = page.evaluate(OVERFLOWING)
            page.locator(".widget-select-multiple").first.evaluate("el => el.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / f"browser_01_routing_{area}px.png"))
            close_notebook(page, path)
        finally:
            browser.close()
    assert tracebacks == 0
    assert empty == 0, (f"{empty} of {plots} plots rendered no data: {empty_titles} (screenshots in {ARTIFACTS}); "
                        f"browser console errors: {console[-5:]}")
    assert plots >= 10, f"expected the notebook's figures and widget plots, found {plots} .js-plotly-plot"
    assert widgets >= 5, f"expected ipywidgets controls, found {widgets} .jupyter-widgets nodes"
    assert clamped < 99999 and empty_after == 0, f"'from token' took {clamped} and left {empty_after} empty plots"
    assert chosen is None or f"[{chosen.group(1)}]" in token_title, (
        f"the page shows {token_title!r} after choosing {options[1]!r}; every token-map title: {all_titles}; "
        f"the kernel's explorer (doc, start, title, views): {in_kernel!r}; console errors: {console[-5:]}")
    assert not overflowing, f"plots {overflowing} px wide stick out of a {area} px output area"
    # issue 18: the token heatmap labels every token it shows and writes every expert id in its cell,
    # on flat colour bands (categories), not a continuous scale
    assert len(token_maps) >= 2, [m["title"] for m in token_maps]
    for facts in token_maps:
        assert facts["visible"] >= 32 and len(facts["ticks"]) == facts["visible"], facts
        assert facts["numbers"] >= facts["cells"] > 0, facts
        assert facts["colours"] >= 2 and facts["stops"] == 2 * facts["colours"], facts
    # token text is decoded on character boundaries: no replacement character in any label, though
    # the documents have non-ASCII text
    assert "\ufffd" not in output_text and not any("\ufffd" in o for o in options)
    assert any(ord(c) > 127 and c.isalpha() for c in output_text)
    files = jupyterlab.root / "report" / "01_routing"
    assert (files / "expert_load.csv").is_file() and (files / "trace" / "manifest.json").is_file()
    RAN_IN_BROWSER.add(NOTEBOOK.name)  # tests/test_notebooks.py need not run it again


#: True once every code cell has run, or as soon as one raised (run-all stops there).
ALL_CELLS_RAN = """() => {
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(el => el.textContent);
  const failed = [...document.querySelectorAll('.jp-OutputArea-output')].some(el => el.textContent.includes('Traceback'));
  return failed || (prompts.length > 0 && prompts.every(t => /\\[\\d+\\]/.test(t)));
}"""


#: Buttons clicked in the browser after the notebook ran, by notebook: each sends a comm message to
#: the kernel and must fill the panel's outputs (plots drawn, no error shown in the panel).
CLICKS = {"02_pruning_skipping.ipynb": ["Prune", "Calibrate β", "Evaluate"],
          "03_steering.ipynb": ["Rank experts", "Generate", "Run experiment"],
          "04_self_contrast.ipynb": ["Decode"]}
#: Plotly figures each notebook must show at the end (the self-contrast panel is HTML, no plots).
MIN_PLOTS = {"04_self_contrast.ipynb": 0}
#: Notebooks whose panels start from the results computed above them: every plot has data before
#: any click (02 joins once its notebook passes ``result=`` etc. to the pruning panel).
PREFILLED = {"02_pruning_skipping.ipynb", "03_steering.ipynb"}
#: Text each notebook's panel must show after the clicks.
PANEL_TEXT = {"02_pruning_skipping.ipynb": "expert calls per token",
              "03_steering.ipynb": "random_off",
              "04_self_contrast.ipynb": "SCMoE tokens differ from what the strong routing"}


def after_clicks(page, path: str, name: str) -> dict:
    """What the page (and, where the page cannot say, the notebook's kernel) shows of each issue-18
    defect of this notebook's panel, after its buttons were clicked."""
    if name == "02_pruning_skipping.ipynb":  # Evaluate measures every domain, not the first 18 rows
        return {"figure": page.evaluate(PLOTS_TITLED, "Held-out perplexity per domain"),
                "domains": kernel_print(page, path, "print(len(panel.domains()))")}
    if name == "03_steering.ipynb":  # the top-N slider moves the outlines on the heatmap
        before = [f["shapes"] for f in page.evaluate(PLOTS_TITLED, "Experts ")]
        set_slider(page, "top-N", 3)
        wait_idle(page, path)
        page.wait_for_timeout(1000)
        return {"before": before, "after": [f["shapes"] for f in page.evaluate(PLOTS_TITLED, "Experts ")],
                "preset": kernel_print(page, path, "print(panel.preset.value)")}
    if name == "04_self_contrast.ipynb":  # the timed runs came after an untimed warm-up of both methods
        return {"warm": kernel_print(page, path, "print(sorted(map(repr, panel._warm)))"),
                "weak": kernel_print(page, path, "print(repr(panel.weak.value))"),
                "ms": page.locator(".jupyter-widgets th", has_text="ms/token").count()}
    return {}


def check_after_clicks(name: str, shown: dict) -> None:
    if name == "02_pruning_skipping.ipynb":
        [figure] = shown["figure"]
        domains = {x for trace in figure["traces"] for x in trace["x"]}
        assert len(domains) == int(shown["domains"]) > 1, (domains, shown["domains"])
    if name == "03_steering.ipynb":
        assert shown["preset"].strip() != "steermoe", shown  # no dashed (switched-on) outlines
        assert len(shown["before"]) == 1 and shown["before"] != [3] and shown["after"] == [3], shown
    if name == "04_self_contrast.ipynb":
        assert shown["weak"].strip() in shown["warm"], shown
        assert shown["ms"] == 2, shown


@pytest.mark.parametrize("name", [p.name for p in NOTEBOOKS if p != NOTEBOOK])
def test_notebook_widgets_render_in_jupyterlab(jupyterlab, name):
    """Each capability notebook runs in JupyterLab's own kernel and its panel renders live widgets."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e .[dev])")
    stem = Path(name).stem
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            path = open_notebook(page, jupyterlab.url, name)
            page.wait_for_function(ALL_CELLS_RAN, timeout=400_000)
            empty_before = rendered(page, sync_api)[0] if name in PREFILLED else 0
            for label in CLICKS.get(name, []):
                button = page.locator(".jupyter-widgets button", has_text=label).last
                button.scroll_into_view_if_needed()
                button.click()
                wait_idle(page, path)
            empty, plots, tracebacks = rendered(page, sync_api)
            empty_titles = page.evaluate(EMPTY_TITLES)
            shown = after_clicks(page, path, name)
            buttons = page.locator(".jupyter-widgets button").count()
            panel_text = page.locator(".jupyter-widgets", has_text=PANEL_TEXT[name]).count() if name in PANEL_TEXT else 1
            panel_errors = page.locator(".jupyter-widgets span", has_text=re.compile(r"\w+(Error|Exception): ")).all_inner_texts()
            page.locator(".jupyter-widgets button").last.evaluate("el => el.scrollIntoView({block: 'end'})")
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / f"browser_{stem}_panel.png"))
            area = narrow_to_output_area(page)
            overflowing = page.evaluate(OVERFLOWING)
            page.screenshot(path=str(ARTIFACTS / f"browser_{stem}_{area}px.png"), full_page=True)
            close_notebook(page, path)
        finally:
            browser.close()
    assert tracebacks == 0, f"{name}: a cell raised in JupyterLab (see {ARTIFACTS}/browser_{stem}_panel.png)"
    assert not panel_errors, f"{name}: the panel showed {panel_errors}"
    assert empty == 0, f"{name}: {empty} of {plots} plots rendered no data: {empty_titles}"
    assert plots >= MIN_PLOTS.get(name, 1), f"{name}: expected plotly figures, found {plots}"
    assert panel_text, f"{name}: the panel does not show {PANEL_TEXT.get(name)!r} after {CLICKS.get(name)}"
    assert buttons >= 2, f"{name}: expected the panel's buttons (run, export), found {buttons}"
    assert empty_before == 0, f"{name}: {empty_before} panel plots were empty before any click"
    assert not overflowing, f"{name}: plots {overflowing} px wide stick out of a {area} px output area"
    check_after_clicks(name, shown)
    RAN_IN_BROWSER.add(name)  # every cell ran without error: tests/test_notebooks.py need not run it again
