"""The embedded demo MoE: a small trained checkpoint that ships with the package.

``workbench.load("demo")`` loads :data:`CHECKPOINT_DIR`. The corpus builder, tokenizer trainer and
training script that produced it live beside this file; the model card is
``checkpoint/README.md``.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKPOINT_DIR = PACKAGE_DIR / "checkpoint"
DATA_DIR = PACKAGE_DIR / "data"


def checkpoint_available() -> bool:
    """Whether the trained demo checkpoint is present in this installation."""
    return (CHECKPOINT_DIR / "config.json").is_file() and any(CHECKPOINT_DIR.glob("*.safetensors"))


def load_demo(path=None, dtype=None):
    """Load the demo checkpoint with plain transformers, offline, in eval mode.

    Args:
        path: Checkpoint directory (default :data:`CHECKPOINT_DIR`).
        dtype: torch dtype to load in (default float32: fastest on CPU).

    Returns:
        ``(model, tokenizer)``: a ``Qwen3MoeForCausalLM`` and its fast tokenizer.

    Example:
        >>> model, tok = load_demo()
        >>> model.config.model_type, model.config.num_experts
        ('qwen3_moe', 16)
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(path or CHECKPOINT_DIR)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32,
                                                 local_files_only=True)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path, local_files_only=True)
