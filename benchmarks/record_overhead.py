"""Recorded versus plain forward throughput on the same inputs, interleaved in one run.

Usage: python benchmarks/record_overhead.py [--model demo] [--repeats 7] [--write]

Prints tokens/s for a plain forward, a forward with the recording hooks installed, and a full
``wb.record`` call (hooks plus moving the routing to a trace), and the ratios against plain.
``--write`` replaces the "record overhead" section of benchmarks/RESULTS.md. Target: <= 1.05x.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import workbench as wb
from workbench.probes.record import _Collector
from results import write_section


def _model(source: str):
    from workbench.demo import checkpoint_available

    if source == "demo" and not checkpoint_available():
        from transformers import AutoModelForCausalLM, Qwen3MoeConfig

        from workbench.testing import tiny_tokenizer
        print("demo checkpoint absent: using a random Qwen3-MoE of demo size (4 layers, 256 wide, 16 experts)")
        config = Qwen3MoeConfig(vocab_size=384, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                num_key_value_heads=2, head_dim=64, num_experts=16, num_experts_per_tok=2,
                                moe_intermediate_size=256, intermediate_size=512, norm_topk_prob=True)
        torch.manual_seed(0)
        return wb.wrap(AutoModelForCausalLM.from_config(config).eval(), tiny_tokenizer(), source="random-demo-size")
    return wb.load(source)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="demo")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = _model(args.model)
    vocab = lm.model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (args.batch, args.length), generator=g)
    mask = torch.ones_like(ids)
    texts = [lm.tokenizer.decode(row) for row in ids[:, : args.length // 2]]
    text_tokens = sum(len(lm.tokenizer(t)["input_ids"]) for t in texts)

    def plain():
        with torch.no_grad():
            lm.model(input_ids=ids, attention_mask=mask, use_cache=False)

    def hooked():
        collector = _Collector(lm.moe_layers)
        lm.probes.add_listener(collector)
        try:
            plain()
        finally:
            lm.probes.remove_listener(collector)

    def plain_texts():
        enc = lm.tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            lm.model(**enc, use_cache=False)

    def recorded():
        wb.record(lm, texts, batch_size=len(texts), progress=False)

    for fn in (plain, hooked, plain_texts, recorded):
        fn()  # warm-up
    times = {f.__name__: [] for f in (plain, hooked, plain_texts, recorded)}
    for _ in range(args.repeats):
        for fn in (plain, hooked, plain_texts, recorded):
            start = time.perf_counter()
            fn()
            times[fn.__name__].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = args.batch * args.length
    hook_ratio = med["hooked"] / med["plain"]
    record_ratio = med["recorded"] / med["plain_texts"]
    lines = [
        f"model: {lm.source} ({lm.adapter.describe(lm.config)}), batch {args.batch} x {args.length} tokens, "
        f"{args.threads} thread(s), {platform.processor() or platform.machine()}, median of {args.repeats}",
        f"plain forward:            {tokens / med['plain']:8.0f} tok/s",
        f"forward + record hooks:   {tokens / med['hooked']:8.0f} tok/s   ratio {hook_ratio:.3f}x",
        f"wb.record (texts, {text_tokens} tok): {text_tokens / med['recorded']:8.0f} tok/s   "
        f"ratio vs tokenize+forward {record_ratio:.3f}x",
    ]
    print("\n".join(lines))
    print(f"record overhead: {hook_ratio:.3f} x (hooks), {record_ratio:.3f} x (full record)")
    if args.write:
        write_section("record overhead", "python benchmarks/record_overhead.py --write", lines)


if __name__ == "__main__":
    main()
