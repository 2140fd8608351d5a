"""Copy a training run's checkpoint into the package (``workbench/demo/checkpoint``) and check it.

``python -m workbench.demo.export --src workbench/demo/_work/run1/checkpoint`` copies the config,
bf16 weights, tokenizer files and training log, then verifies that the copy loads with plain
``AutoModelForCausalLM.from_pretrained`` offline, is bf16 and fits the size limit.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from workbench.demo import CHECKPOINT_DIR

MAX_BYTES = 35_000_000
FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json", "special_tokens_map.json", "training_log.json")


def check_checkpoint(path: Path | str = CHECKPOINT_DIR) -> dict:
    """Verify a checkpoint directory: loadable offline, ``qwen3_moe``, bf16 weights, size limit.

    Returns:
        ``{"bytes": size of the safetensors, "dtypes": set of stored dtypes, "model_type": ...}``.

    Example:
        >>> info = check_checkpoint()
        >>> info["model_type"], info["dtypes"]
        ('qwen3_moe', {'BF16'})
    """
    import json
    import struct

    from transformers import AutoConfig

    path = Path(path)
    weights = path / "model.safetensors"
    with open(weights, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    size = weights.stat().st_size
    if size > MAX_BYTES:
        raise ValueError(f"{weights} is {size / 1e6:.1f} MB, over the {MAX_BYTES / 1e6:.0f} MB limit")
    cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if cfg.output_router_logits:
        raise ValueError("config has output_router_logits=True: inference would pay for the aux loss")
    return {"bytes": size, "dtypes": dtypes, "model_type": cfg.model_type}


def export_checkpoint(src: Path | str, dst: Path | str = CHECKPOINT_DIR) -> dict:
    """Copy the files of ``src`` that make up the shipped checkpoint to ``dst`` and check them."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    return check_checkpoint(dst)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m workbench.demo.export --src DIR [--dst DIR]``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, required=True)
    p.add_argument("--dst", type=Path, default=CHECKPOINT_DIR)
    args = p.parse_args(argv)
    print(export_checkpoint(args.src, args.dst))


if __name__ == "__main__":
    main()
