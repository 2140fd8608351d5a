"""The routing notebook in a real browser: JupyterLab + headless Debian Chromium through Playwright.

Starts JupyterLab on a free localhost port (no token, no browser of its own, a temporary root and
config, no network), opens ``notebooks/01_routing.ipynb`` (with small parameters), runs every cell,
and checks that plotly figures and ipywidgets rendered. Screenshots are kept under
``tests/artifacts/`` (git-ignored). Playwright drives the system ``/usr/bin/chromium``; it never
downloads a browser of its own.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
NOTEBOOK = ROOT / "notebooks" / "01_routing.ipynb"

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


@pytest.fixture()
def jupyterlab(tmp_path):
    """A JupyterLab server over a temporary root holding a quick copy of the notebook."""
    papermill = pytest.importorskip("papermill", reason="needs papermill (pip install -e .[notebook])")
    pytest.importorskip("jupyterlab", reason="needs jupyterlab (pip install -e .[notebook])")
    root = tmp_path / "root"
    (root / "notebooks").mkdir(parents=True)
    papermill.execute_notebook(str(NOTEBOOK), str(root / "notebooks" / NOTEBOOK.name), prepare_only=True,
                               parameters={"sample": 18, "norm_docs_per_label": 1}, progress_bar=False)
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
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


EMPTY_PLOTS = """(() => [...document.querySelectorAll('.js-plotly-plot')].filter(el =>
  el.querySelectorAll('.heatmaplayer image, .barlayer path, .scatterlayer path').length === 0).length)()"""

RUN_ALL = """async () => {
  const app = window.jupyterapp;
  const panel = app.shell.currentWidget;
  await panel.context.ready;
  await panel.sessionContext.ready;
  await app.commands.execute('notebook:run-all-cells');
}"""


def test_routing_notebook_renders_plots_and_widgets(jupyterlab):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e .[dev])")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{jupyterlab}/lab/tree/notebooks/{NOTEBOOK.name}", timeout=90_000)
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext", timeout=90_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.evaluate(RUN_ALL)
            page.locator(".jp-OutputArea-output", has_text="notebook finished").wait_for(timeout=300_000)
            try:  # every plot, the widgets' FigureWidgets included, has drawn its data
                page.wait_for_function(EMPTY_PLOTS + " === 0", timeout=60_000)
            except sync_api.TimeoutError:
                pass  # reported by the assertion below, after the screenshots
            empty = page.evaluate(EMPTY_PLOTS)
            plots = page.locator(".js-plotly-plot").count()
            widgets = page.locator(".jupyter-widgets").count()
            tracebacks = page.locator(".jp-OutputArea-output:has-text('Traceback')").count()
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
        finally:
            browser.close()
    assert tracebacks == 0
    assert empty == 0, f"{empty} of {plots} plots rendered no data (see the screenshots in {ARTIFACTS})"
    assert plots >= 10, f"expected the notebook's figures and widget plots, found {plots} .js-plotly-plot"
    assert widgets >= 5, f"expected ipywidgets controls, found {widgets} .jupyter-widgets nodes"
