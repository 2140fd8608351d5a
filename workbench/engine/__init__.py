"""Serving-engine backends: the workbench's recording and edits inside vLLM.

``wb.load(source, backend="vllm", **engine_args)`` returns a :class:`VLLMModel` that
:func:`workbench.record`, :func:`workbench.edit` and the store accept like a transformers model.
See ``docs/vllm.md`` for installing vLLM and for running on several GPUs and nodes.
"""

from workbench.engine.decide import RoutingFacts, engine_decide
from workbench.engine.model import VLLMModel, Generation, load_vllm

__all__ = ["Generation", "RoutingFacts", "VLLMModel", "engine_decide", "load_vllm"]
