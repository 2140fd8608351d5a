"""Recording routing in a vLLM engine: its cost against the same engine plain, and its throughput
against the transformers backend, on the same texts, interleaved in one run.

Usage (in the vLLM environment, made by ``bash scripts/vllm-env.sh``):
    .venv-vllm/bin/python benchmarks/vllm_record.py [--model demo] [--docs 64] [--repeats 5] [--write]

CPU section: every MoE layer recorded (ids and weights), prompts only (one sampled token each).
Three timings per repeat, in rotating order: vLLM plain (``llm.generate`` on the token ids),
vLLM with the workbench's routing capture (the same call inside ``engine_call``), and the whole
``wb.record`` (tokenising, capture, trace assembly); then ``wb.record`` on the transformers backend.
Target: capture <= 1.10x plain. GPU section: the same on CUDA, filled in where a CUDA device and a
CUDA build of vLLM exist (skipped cleanly otherwise). ``--write`` replaces the "vLLM recording"
section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402

import workbench as wb  # noqa: E402
from results import write_section  # noqa: E402


def _texts(count: int) -> list[str]:
    from workbench.demo.heldout import load_heldout

    docs = load_heldout()
    return [d["text"] for d in docs[:count]]


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _section(vm, lm, texts, repeats: int, batch: int) -> list[str]:
    from vllm import SamplingParams

    ids = [vm.tokenizer(t)["input_ids"][:vm.config.max_position_embeddings] for t in texts]
    tokens = sum(len(x) for x in ids)
    prompts = [{"prompt_token_ids": x} for x in ids]
    params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
    layers = list(vm.moe_layers)

    runs = {
        "vLLM plain": lambda: vm.llm.generate(prompts, params, use_tqdm=False),
        "vLLM + capture": lambda: vm.engine_call(lambda: vm.llm.generate(prompts, params, use_tqdm=False),
                                                 capture={"layers": layers, "scores": False}),
        "wb.record, vLLM": lambda: wb.record(vm, texts, batch_size=len(texts), progress=False),
    }
    if lm is not None:
        runs["wb.record, transformers"] = lambda: wb.record(lm, texts, batch_size=batch, progress=False)
    for fn in runs.values():  # warm-up
        fn()
    times = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(_time(runs[name]))
    med = {name: statistics.median(v) for name, v in times.items()}
    plain = med["vLLM plain"]
    lines = [f"model: {vm.name.split('/')[-1] if vm.source != 'demo' else 'demo'} ({vm.adapter.describe(vm.config)}), "
             f"{len(texts)} held-out documents, {tokens} tokens, all {len(layers)} MoE layers (ids + weights), "
             f"{platform.machine()}, {torch.get_num_threads()} thread(s), median of {repeats}"]
    for name, t in med.items():
        ratio = f"   {t / plain:.3f}x plain" if name != "vLLM plain" else ""
        lines.append(f"{name + ':':28s}{tokens / t:9.0f} tok/s{ratio}")
    if lm is not None:
        lines.append(f"vLLM vs transformers recording: {med['wb.record, transformers'] / med['wb.record, vLLM']:.2f}x "
                     "the throughput")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo", help="checkpoint (default: demo)")
    parser.add_argument("--docs", type=int, default=64, help="held-out documents (default: 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per run (default: 5)")
    parser.add_argument("--batch", type=int, default=8, help="transformers batch size (default: 8)")
    parser.add_argument("--write", action="store_true", help="replace the section in RESULTS.md")
    args = parser.parse_args()
    texts = _texts(args.docs)
    lines = ["CPU"]
    lm = wb.load(args.model)
    with wb.load(args.model, backend="vllm", max_model_len=1024) as vm:
        lines += _section(vm, lm, texts, args.repeats, args.batch)
    del lm
    lines.append("")
    from vllm.platforms import current_platform

    if torch.cuda.is_available() and current_platform.is_cuda():
        lines.append("GPU")
        with wb.load(args.model, backend="vllm", max_model_len=1024, gpu_memory_utilization=0.5) as vm:
            lines += _section(vm, None, texts, args.repeats, args.batch)
    else:
        lines.append("GPU: skipped (no CUDA device with a CUDA build of vLLM here); run this script there to fill it in")
    print("\n".join(lines))
    if args.write:
        write_section("vLLM recording", "python benchmarks/vllm_record.py --write (in .venv-vllm)", lines)


if __name__ == "__main__":
    main()
