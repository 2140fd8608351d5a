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
