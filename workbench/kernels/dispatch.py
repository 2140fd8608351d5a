"""One dispatcher for the compute backends of every kernel operation.

Each operation (``"route_plans"``, ``"grouped_experts"``, ``"recombine"``) has up to three backends:

* ``"reference"`` — explicit Python loops, slow on purpose; what every fast path is tested against.
* ``"torch"`` — vectorised torch; the default on CPU and wherever Triton cannot run.
* ``"triton"`` — Triton kernels; the default on CUDA when the ``triton`` package is installed.

Backends are registered as ``"module:function"`` strings and imported on first use, so importing
``workbench`` never imports Triton. Every public operation takes ``backend=`` to override the choice
per call.

Triton kernels also run on CPU tensors under Triton's interpreter, for testing: the environment
variable ``TRITON_INTERPRET=1`` must be set before the process defines any kernel (i.e. before the
first Triton call). The interpreter does not support bfloat16.

Example:
    >>> import torch
    >>> from workbench.kernels.dispatch import resolve, backends
    >>> backends("grouped_experts")
    ('reference', 'torch', 'triton')
    >>> resolve("grouped_experts", device=torch.device("cpu"))[0]
    'torch'
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Callable

import torch

BACKENDS = ("reference", "torch", "triton")

_REGISTRY: dict[str, dict[str, str]] = {}
_LOADED: dict[tuple[str, str], Callable] = {}


def register(op: str, backend: str, target: str) -> None:
    """Register ``target`` (``"package.module:function"``) as ``backend`` of operation ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if ":" not in target:
        raise ValueError(f"target must look like 'package.module:function', got {target!r}")
    _REGISTRY.setdefault(op, {})[backend] = target
    _LOADED.pop((op, backend), None)


def backends(op: str) -> tuple[str, ...]:
    """The registered backends of ``op``, in :data:`BACKENDS` order."""
    if op not in _REGISTRY:
        raise KeyError(f"unknown kernel operation {op!r}; known: {', '.join(sorted(_REGISTRY))}")
    return tuple(b for b in BACKENDS if b in _REGISTRY[op])


def triton_installed() -> bool:
    """Whether the ``triton`` package can be imported (it is not imported here)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    """Whether Triton's CPU interpreter is switched on for this process (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_usable(device: torch.device) -> bool:
    """Whether Triton kernels can run on tensors on ``device``."""
    if not triton_installed():
        return False
    return device.type == "cuda" or (device.type == "cpu" and triton_interpreting())


def _load(op: str, backend: str) -> Callable:
    key = (op, backend)
    if key not in _LOADED:
        module, name = _REGISTRY[op][backend].split(":")
        _LOADED[key] = getattr(importlib.import_module(module), name)
    return _LOADED[key]


def resolve(op: str, backend: str | None = None, device: torch.device | None = None) -> tuple[str, Callable]:
    """The backend to run ``op`` with, and its function.

    Args:
        op: the operation name.
        backend: ``"reference"``, ``"torch"``, ``"triton"`` or None (pick: Triton on CUDA when
            installed, torch otherwise; the interpreter is never picked by default).
        device: where the operands live.

    Raises:
        ValueError: for an unknown backend, or Triton where it cannot run (with what to do).
    """
    available = backends(op)
    device = torch.device("cpu") if device is None else torch.device(device)
    if backend is None:
        if "triton" in available and device.type == "cuda" and triton_installed():
            backend = "triton"
        else:
            backend = "torch"
    if backend not in available:
        raise ValueError(f"operation {op!r} has no backend {backend!r}; choose one of {', '.join(available)}")
    if backend == "triton" and not triton_usable(device):
        if not triton_installed():
            raise ValueError("the triton backend needs the triton package: pip install 'moe-workbench[triton]'")
        raise ValueError(f"the triton backend runs on CUDA tensors, not on {device.type}; use backend='torch', "
                         "or set TRITON_INTERPRET=1 before starting Python to test kernels on CPU")
    return backend, _load(op, backend)


register("route_plans", "reference", "workbench.kernels.replay_reference:route_plans_reference")
register("route_plans", "torch", "workbench.kernels.plans:route_plans_torch")
register("route_plans", "triton", "workbench.kernels.triton_routing:route_plans_triton")
register("grouped_experts", "reference", "workbench.kernels.replay_reference:grouped_experts_reference")
register("grouped_experts", "torch", "workbench.kernels.grouped:grouped_experts_torch")
register("grouped_experts", "triton", "workbench.kernels.triton_replay:grouped_experts_triton")
register("recombine", "reference", "workbench.kernels.replay_reference:recombine_reference")
register("recombine", "torch", "workbench.kernels.recombine:recombine_torch")
