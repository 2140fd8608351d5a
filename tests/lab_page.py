"""What a JupyterLab page shows and does, for the browser tests (tests/test_browser.py): JavaScript
queries run in the page through Playwright (plots drawn, their titles, shapes and tick labels, the
notebook's text), and actions (open and run a notebook, type into a slider, run code in the
notebook's own kernel, resize the output area)."""

from __future__ import annotations

import json
from pathlib import Path

EMPTY_PLOTS = """(() => [...document.querySelectorAll('.js-plotly-plot')].filter(el =>
  el.querySelectorAll('.heatmaplayer image, .barlayer path, .scatterlayer path').length === 0).length)()"""

#: Title (or placeholder text) of every plot that drew no data, to say which one in a failure.
EMPTY_TITLES = """(() => [...document.querySelectorAll('.js-plotly-plot')].filter(el =>
  el.querySelectorAll('.heatmaplayer image, .barlayer path, .scatterlayer path').length === 0).map(el =>
  (el.querySelector('.gtitle, .annotation-text') || {textContent: '(untitled)'}).textContent))()"""

#: The notebook panel of ``path`` among JupyterLab's open documents (null until it is open).
FIND_PANEL = """(path) => {
  const app = window.jupyterapp;
  if (!app || !app.shell) return null;
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path && w.sessionContext) return w;
  }
  return null;
}"""

#: Activate the notebook of ``path`` and run all its cells in its own kernel.
RUN_ALL = """async (path) => {
  const app = window.jupyterapp;
  const panel = (""" + FIND_PANEL + """)(path);
  await panel.context.ready;
  await panel.sessionContext.ready;
  app.shell.activateById(panel.id);
  await panel.content.ready;
  await app.commands.execute('notebook:run-all-cells');
}"""


def open_notebook(page, base: str, name: str) -> str:
    """Open ``notebooks/NAME`` in a workspace of its own (``?reset``: no document of an earlier
    test is restored, so the run-all command reaches this notebook) and run all its cells.
    Returns the notebook's path in the server."""
    path = f"notebooks/{name}"
    page.goto(f"{base}/lab/workspaces/test-{Path(name).stem}/tree/{path}?reset", timeout=90_000)
    page.wait_for_function(f"() => ({FIND_PANEL})({json.dumps(path)}) !== null", timeout=90_000)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.evaluate(RUN_ALL, path)
    return path


def rendered(page, sync_api) -> tuple[int, int, int]:
    """Wait (up to a minute) until every plot, the widgets' FigureWidgets included, has drawn its
    data; then ``(plots without data, plots, outputs with a traceback)``. A timeout is not raised
    here: the caller's assertions report it, after its screenshots."""
    try:
        page.wait_for_function(EMPTY_PLOTS + " === 0", timeout=60_000)
    except sync_api.TimeoutError:
        pass
    return (page.evaluate(EMPTY_PLOTS), page.locator(".js-plotly-plot").count(),
            page.locator(".jp-OutputArea-output:has-text('Traceback')").count())


#: Widths of the plots that stick out of their output area (the user's JupyterLab had ~968 px).
OVERFLOWING = """(() => [...document.querySelectorAll('.jp-OutputArea-output .js-plotly-plot')].filter(el => {
  const area = el.closest('.jp-OutputArea-output').getBoundingClientRect();
  const box = el.getBoundingClientRect();
  return box.width > 0 && box.right > area.right + 2;
}).map(el => Math.round(el.getBoundingClientRect().width)))()"""
#: The output area the issue-18 user had: figures must fit it.
OUTPUT_AREA_PX = 968


def narrow_to_output_area(page, width: int = OUTPUT_AREA_PX) -> int:
    """Resize the viewport until the notebook's output areas are ``width`` pixels wide; returns it."""
    area = page.evaluate("() => document.querySelector('.jp-OutputArea-output').clientWidth")
    viewport = page.viewport_size
    page.set_viewport_size({"width": max(800, viewport["width"] - (area - width)), "height": viewport["height"]})
    try:  # FigureWidgets relayout to the new width in the browser; under load that takes a while
        page.wait_for_function(f"() => {OVERFLOWING}.length === 0", timeout=30_000)
    except Exception:  # noqa: BLE001 - the caller asserts on OVERFLOWING and names the widths
        pass
    return page.evaluate("() => document.querySelector('.jp-OutputArea-output').clientWidth")


#: What the page shows of every widget plot (a panel's FigureWidget, not a notebook cell's static
#: figure) whose title starts with the argument: its title, the number of outline shapes, and per
#: trace its type, name and the categories on each axis.
PLOTS_TITLED = """(prefix) => [...document.querySelectorAll('.jupyter-widgets .js-plotly-plot')].filter(el => {
  const title = el.layout && el.layout.title;
  return title && String(title.text !== undefined ? title.text : title).startsWith(prefix);
}).map(el => ({
  title: String(el.layout.title.text !== undefined ? el.layout.title.text : el.layout.title),
  shapes: (el.layout.shapes || []).length,
  traces: el.data.map(t => ({type: t.type, name: t.name || '', x: Array.from(t.x || [], String),
                             y: Array.from(t.y || [], String)})),
}))"""

#: The token heatmaps (explorer and figure) as drawn: x tick labels shown, tokens in the visible range,
#: numbers drawn in cells, filled cells in range, and the colour scale (flat steps: colours, stops).
TOKEN_MAPS = """() => [...document.querySelectorAll('.js-plotly-plot')].filter(el => el.layout && el.layout.title &&
    String(el.layout.title.text || el.layout.title).startsWith('Experts chosen per token')).map(el => {
  const t = el._fullData[0], range = el._fullLayout.xaxis.range;
  const inRange = x => x >= range[0] && x <= range[1];
  const xs = Array.from(t.x, Number);
  let cells = 0;
  Array.from(t.z).forEach(row => Array.from(row).forEach((v, j) => {
    if (v !== null && !Number.isNaN(v) && inRange(xs[j])) cells += 1; }));
  return {title: String(el.layout.title.text || el.layout.title),
          ticks: [...el.querySelectorAll('.xtick text')].map(e => e.textContent),
          visible: xs.filter(inRange).length, cells,
          numbers: el.querySelectorAll('.heatmaplayer text').length,
          colours: new Set(t.colorscale.map(c => c[1])).size, stops: t.colorscale.length};
})"""

#: All text of the notebook's outputs and widgets, SVG labels included.
OUTPUT_TEXT = """() => [...document.querySelectorAll('.jp-OutputArea-output')].map(el => el.textContent).join('\\n')"""

#: Run ``code`` in the notebook's kernel (no history) and return what it printed.
KERNEL_PRINT = """async ([path, code]) => {
  const panel = (""" + FIND_PANEL + """)(path);
  const future = panel.sessionContext.session.kernel.requestExecute({code, store_history: false});
  let out = '';
  future.onIOPub = msg => {
    if (msg.header.msg_type === 'stream') out += msg.content.text;
    if (msg.header.msg_type === 'error') out += msg.content.ename + ': ' + msg.content.evalue;
  };
  await future.done;
  return out;
}"""


def kernel_print(page, path: str, code: str) -> str:
    """What ``code`` prints in the kernel of the notebook at ``path`` (the page's own kernel)."""
    return page.evaluate(KERNEL_PRINT, [path, code])


def set_slider(page, description: str, value: int) -> None:
    """Type ``value`` into the readout of the ipywidgets slider labelled ``description``."""
    readout = page.locator(".widget-slider", has_text=description).locator(".widget-readout").first
    readout.scroll_into_view_if_needed()
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(value))
    page.keyboard.press("Enter")


def wait_idle(page, path: str) -> None:
    """Wait until the kernel of the notebook at ``path`` has handled a click: it gets the comm
    message, is busy with the callback, then idle again."""
    page.wait_for_timeout(1000)
    page.wait_for_function(f"() => ({FIND_PANEL})({json.dumps(path)})"
                           ".sessionContext.session.kernel.status === 'idle'", timeout=300_000)


def close_notebook(page, path: str) -> None:
    """Shut the notebook's kernel down, so that the next test has the machine to itself."""
    page.evaluate("async (path) => { const p = (" + FIND_PANEL + ")(path);"
                  " if (p) { await p.sessionContext.shutdown(); p.close(); } }", path)
