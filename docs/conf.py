"""Sphinx configuration of the moe-workbench documentation (``make docs`` -> ``site/``).

Builds offline: no intersphinx, no remote images, notebooks rendered from their committed cells
without executing them (``nb_execution_mode = "off"``). ``tests/test_docs.py`` builds it with
``-W --keep-going -n``: any warning, including a cross-reference that does not resolve, fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

project = "moe-workbench"
author = "moe-workbench contributors"
copyright = "moe-workbench contributors"
import workbench  # noqa: E402

release = version = workbench.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_nb",  # Markdown pages (MyST) and the notebooks
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "notebooks/.ipynb_checkpoints", "**/.ipynb_checkpoints", "notebooks/executed-*"]

# --- notebooks: rendered as committed (no outputs), never executed at build time
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # notebooks start their sections at ## under one # title

# --- API reference
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_mock_imports = ["vllm"]  # the vLLM backend's engine is optional (scripts/vllm-env.sh)
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True
python_use_unqualified_type_names = True

# Broken references fail the build (-n -W) ...
nitpicky = True
# ... except those into other projects: the build is offline, so there is no intersphinx inventory of
# torch, numpy, pandas, plotly, ... and their names render as plain code.
_EXTERNAL = (r"(builtins|collections|contextlib|dataclasses|os|pathlib|typing|t|types|enum|abc|io|json|np|numpy|"
             r"pd|pandas|torch|nn|transformers|tokenizers|safetensors|plotly|go|ipywidgets|widgets|anywidget|"
             r"duckdb|pyarrow|pa|pq|scipy|sklearn|nnsight|tqdm|vllm|concurrent|threading|random)(\..+)?")
nitpick_ignore_regex = [
    (r"py:.*", _EXTERNAL),
    (r"py:class", r"(Path|PathLike|Iterable|Iterator|Sequence|Mapping|Callable|Any|Literal|Tensor|DataFrame|"
                  r"Series|Figure|FigureWidget|ndarray|Module|PreTrainedModel|PreTrainedTokenizerBase|"
                  r"DuckDBPyConnection|DuckDBPyRelation|Generator|ContextManager|Self|TypeAlias)"),
]

# --- HTML
html_theme = "furo"
html_title = f"moe-workbench {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
html_theme_options = {"navigation_with_keys": True}


# --- references into the package's internals. The reference documents the public API (each
# subpackage's ``__all__``); docstrings also point at submodules and helpers that are not on these
# pages. Such a reference renders as code when its target exists in the package, and stays a warning
# (so fails the build) when it names nothing: a renamed or misspelt target is caught.
import functools  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import inspect  # noqa: E402
import re  # noqa: E402


def _walk(obj, attrs: list[str]) -> bool:
    for i, attr in enumerate(attrs):
        if hasattr(obj, attr):
            obj = getattr(obj, attr)
        elif inspect.isclass(obj) and i == len(attrs) - 1:  # an attribute its instances set
            try:
                return f"self.{attr}" in inspect.getsource(obj)
            except (OSError, TypeError):
                return False
        else:
            return False
    return True


@functools.lru_cache(maxsize=None)
def _lookup(path: str) -> bool:
    """Whether ``path`` names a module of the package, or something in one."""
    parts = path.split(".")
    if parts[0] != "workbench":
        return False
    for cut in range(len(parts), 0, -1):  # the longest importable module first
        name = ".".join(parts[:cut])
        try:
            module = importlib.import_module(name) if importlib.util.find_spec(name) else None
        except (ImportError, ValueError):  # a parent is not a package
            module = None
        if module is not None and _walk(module, parts[cut:]):
            return True
    return False


def _candidates(node) -> list[str]:
    target = node.get("reftarget", "").lstrip("~.")
    scopes = []
    # the object whose docstring holds the reference (where its module's names are in scope)
    source = re.search(r"docstring of (\S+)", node.source or "")
    if source:
        parts = source.group(1).split(".")
        scopes += [".".join(parts[:n]) for n in range(len(parts), 0, -1)]
    module, klass = node.get("py:module"), node.get("py:class")
    if module and klass:
        scopes.append(f"{module}.{klass}")
    if module:
        scopes.append(module)
    return [target] + [f"{scope}.{target}" for scope in scopes] + [f"workbench.{target}"]


def _internal_reference(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    for path in _candidates(node):
        if _lookup(path):
            return contnode
    return None


# --- napoleon: a property's or attribute's docstring is prose here, never "type: description"
# (the types are annotations); and "a, b, c: text" in an Attributes section describes each name.
from sphinx.ext.napoleon import docstring as _napoleon  # noqa: E402

_napoleon.GoogleDocstring._parse_attribute_docstring = lambda self: self._consume_to_end()
_SHARED = re.compile(r"^(\s+)([A-Za-z_]\w*(?:,\s*[A-Za-z_]\w*)+):(.*)$")


def _split_shared_attributes(app, what, name, obj, options, lines):
    in_attributes, indent = False, None
    out = []
    for line in lines:
        stripped = line.strip()
        if stripped in ("Attributes:", "Attributes"):
            in_attributes, indent = True, None
        elif stripped and not line.startswith(" ") and stripped.endswith(":"):
            in_attributes = False
        match = _SHARED.match(line) if in_attributes else None
        if match and (indent is None or len(match.group(1)) == indent):
            indent = len(match.group(1))
            out += [f"{match.group(1)}{n.strip()}:{match.group(3)}" for n in match.group(2).split(",")]
        else:
            out.append(line)
    lines[:] = out


def setup(app):
    app.connect("missing-reference", _internal_reference)
    app.connect("autodoc-process-docstring", _split_shared_attributes, priority=400)  # before napoleon
