"""Architecture knowledge as data: one small adapter per MoE family, in a registry.

Example:
    >>> from workbench.adapters import get_adapter, supported_model_types
    >>> get_adapter("mixtral").rule(None).describe()
    'softmax -> top-k -> renormalise'
    >>> "qwen3_moe" in supported_model_types()
    True
"""

from workbench.adapters import (  # noqa: F401  (registration side effects)
    dbrx,
    deepseek,
    gpt_oss,
    granite,
    jetmoe,
    llama4,
    mixtral,
    olmoe,
    phimoe,
    qwen_moe,
)
from workbench.adapters.base import (
    ROUTER_IO,
    Adapter,
    UnsupportedModelError,
    get_adapter,
    register,
    supported_model_types,
    unregister,
)

__all__ = ["ROUTER_IO", "Adapter", "UnsupportedModelError", "get_adapter", "register",
           "supported_model_types", "unregister"]
