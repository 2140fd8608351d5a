"""Architecture knowledge as data.

Most MoE families need no file: :mod:`~workbench.adapters.discover` finds their blocks in the module
tree and :mod:`~workbench.adapters.identify` identifies their routing rule on the router itself.
A family file (an :class:`Adapter` in the registry) stays only where a family deviates from the
transformers-5 block shape: DBRX (the block picks the top-k), JetMoE (the router sorts tokens) and
Llama-4 (dense scores scale the experts' inputs).

Example:
    >>> import workbench as wb
    >>> from workbench.adapters import adapter_for, get_adapter
    >>> from workbench.testing import tiny_model
    >>> get_adapter("dbrx").router_io
    'experts_call'
    >>> model, _ = tiny_model("olmoe")
    >>> adapter_for(model).origin
    'identified'
"""

from workbench.adapters import dbrx, jetmoe, llama4, switch  # noqa: F401  (registration side effects)
from workbench.adapters.base import (
    ROUTER_IO,
    Adapter,
    UnsupportedModelError,
    adapter_for,
    get_adapter,
    register,
    registered_model_types,
    supported_model_types,
    unregister,
)

__all__ = ["ROUTER_IO", "Adapter", "UnsupportedModelError", "adapter_for", "get_adapter", "register",
           "registered_model_types", "supported_model_types", "unregister"]
