"""The demo checkpoint's forward pass over 512 tokens on this CPU (issue target: well under 0.5 s).

Usage: python benchmarks/demo_forward.py [--tokens 512] [--repeats 5] [--write]

Times one batch-1 forward pass without a KV cache (fp32, as ``workbench.load("demo")`` gives it)
with 1 thread and with every core, interleaved round by round, median of ``--repeats``; the model
card quotes the same measurement (``workbench.demo.metrics.forward_latency``).
``--write`` replaces the "demo forward pass" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics

import torch
from results import write_section

from workbench.demo import load_demo
from workbench.demo.metrics import forward_latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    model, _ = load_demo()
    threads = sorted({1, os.cpu_count() or 1})
    times = {n: [] for n in threads}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for n in threads:
                torch.set_num_threads(n)
                times[n].append(forward_latency(model, args.tokens, repeats=1))
    lines = [f"demo checkpoint, {args.tokens}-token forward, batch 1, no cache, fp32; {platform.machine()}, "
             f"torch {torch.__version__}; median of {args.repeats} interleaved rounds",
             *(f"  {n} thread(s): {1000 * statistics.median(v):7.1f} ms" for n, v in times.items()),
             f"  target: well under 500 ms; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"]
    print("\n".join(lines))
    if args.write:
        write_section("demo forward pass", "python benchmarks/demo_forward.py --write", lines)


if __name__ == "__main__":
    main()
