"""Replay benchmarks: recombine versus re-running the layer; Triton replay versus transformers.

Usage: python benchmarks/replay.py [--quick] [--model demo|PATH] [--layer L] [--tokens T]
                                   [--candidates 1000] [--threads 1] [--write]

(a) Recombine: losses of 1,000 candidate expert masks of one MoE layer (``wb.Mask``, next-best) from
    one layer cache, against re-running the MoE block under ``wb.edit`` once per candidate on the
    same cached inputs. The baseline is timed on a sample of the candidates and scaled to all of
    them; on that sample the two losses are compared. Target: >= 100x on CPU.
(b) Triton replay (CUDA only): the grouped-GEMM kernels versus transformers' own experts forward at a
    Qwen3-30B-A3B layer shape (E=128, k=8, H=2048, I=768, T=512..4096, bf16), and versus the
    bandwidth floor (reading the active experts' weights once at the copy bandwidth of the device).
    Without a GPU it prints that it was skipped.

The last line printed is ``recombine speedup: N x``. ``--write`` replaces the "replay" section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time

import torch

import workbench as wb
from results import write_section
from workbench.replay import capture, recombine

FALLBACK_TEXTS = ["The quick brown fox jumps over the lazy dog. " * 6, "def add(a, b):\n    return a + b\n" * 8,
                  "Der schnelle braune Fuchs springt über den faulen Hund. " * 6, "12 + 34 = 46. 7 * 8 = 56. " * 10]


def _model(source: str):
    from workbench.demo import checkpoint_available

    if source == "demo" and not checkpoint_available():
        from workbench.testing import tiny_model

        print("note: the demo checkpoint is absent; using the tiny qwen3_moe test model instead")
        return wb.wrap(*tiny_model("qwen3_moe")), "tiny qwen3_moe (demo checkpoint absent)"
    return wb.load(source), source


def _texts(lm, tokens: int) -> list[str]:
    from workbench.demo import DATA_DIR

    path = DATA_DIR / "heldout.jsonl"
    pool = ([json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
            if path.is_file() else FALLBACK_TEXTS * 50)
    texts, total = [], 0
    for text in pool:
        n = len(lm.tokenizer(text)["input_ids"])
        texts.append(text)
        total += n
        if total >= tokens:
            break
    return texts


def _masks(lm, layer: int, count: int, seed: int = 0):
    """``count`` expert masks (sets of 1..E/4 experts, at least E-k left); distinct when possible."""
    rng = random.Random(seed)
    e, k = lm.num_experts, lm.top_k
    largest = max(1, min(e // 4, e - k))
    seen, masks = set(), []
    for _ in range(count * 20):
        subset = tuple(sorted(rng.sample(range(e), rng.randint(1, largest))))
        if subset not in seen:
            seen.add(subset)
            masks.append(subset)
        if len(masks) == count:
            break
    repeated = len(masks) < count
    while len(masks) < count:
        masks.append(masks[rng.randrange(len(seen))])
    return [wb.Mask({layer: list(m)}) for m in masks], repeated


def _rerun_losses(lm, cache, masks):
    block = lm.block(cache.layer)
    x = cache.x[None].to(lm.device)
    y = cache.y.double()
    losses = []
    with torch.no_grad():
        for spec in masks:
            with wb.edit(lm, spec):
                out = block(x)
            out = out[0] if isinstance(out, tuple) else out
            losses.append(float((out.reshape(cache.x.shape).double().cpu() - y).pow(2).sum().sqrt()))
    return losses


def _best_time(fn, repeats: int) -> tuple[float, float]:
    """Best CPU time (process time: fair on a busy machine) and best wall time, in seconds."""
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return min(cpu), min(wall)


def bench_recombine(args) -> tuple[float, list[str]]:
    lm, label = _model(args.model)
    layer = args.layer if args.layer is not None else lm.moe_layers[len(lm.moe_layers) // 2]
    texts = _texts(lm, args.tokens)
    cache = capture(lm, texts, layers=[layer], candidates="all", max_length=256, progress=False)[layer]
    masks, repeated = _masks(lm, layer, args.candidates)
    sample = masks[:args.baseline_sample]
    kept = []
    rerun_cpu, rerun_wall = (v / len(sample) for v in _best_time(lambda: kept.append(_rerun_losses(lm, cache, sample)), 1))
    res = recombine(lm, cache, masks)  # warm-up, and the losses compared below
    gram_cpu, gram_wall = _best_time(lambda: recombine(lm, cache, masks), args.repeats)
    direct_cpu, direct_wall = _best_time(lambda: recombine(lm, cache, masks, method="direct"), 1)
    base_losses = torch.tensor(kept[0], dtype=torch.float64)
    diff = float((res.loss[:len(sample)] - base_losses).abs().max() / res.norm)
    n = len(masks)
    speedup = rerun_cpu * n / gram_cpu
    largest = max(1, min(lm.num_experts // 4, lm.num_experts - lm.top_k))
    lines = [
        f"model: {label}; layer {layer}; E={lm.num_experts}, k={lm.top_k}, H={cache.hidden}; T={cache.num_tokens} tokens",
        f"candidates: {n} expert masks (Mask next_best, 1..{largest} experts each"
        + (", drawn with repetition: fewer distinct masks exist)" if repeated else ")"),
        f"device: CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); times: CPU time (wall time in brackets)",
        f"re-run the MoE block under wb.edit, per candidate (timed on {len(sample)}): "
        f"{rerun_cpu * 1e3:.2f} ms ({rerun_wall * 1e3:.2f} ms); for {n}: {rerun_cpu * n:.2f} s ({rerun_wall * n:.2f} s)",
        f"recombine, losses (Gram, float64), all {n}: {gram_cpu * 1e3:.1f} ms ({gram_wall * 1e3:.1f} ms) "
        f"-> {speedup:,.0f}x ({rerun_wall * n / gram_wall:,.0f}x wall)",
        f"recombine, losses via full outputs, all {n}: {direct_cpu * 1e3:.1f} ms ({direct_wall * 1e3:.1f} ms) "
        f"-> {rerun_cpu * n / direct_cpu:,.0f}x ({rerun_wall * n / direct_wall:,.0f}x wall)",
        f"losses, recombine vs re-run (on the timed sample): max |difference| / ||y|| = {diff:.1e}",
        f"machine load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(CPU time is the figure to compare on a busy machine)",
    ]
    return speedup, lines


def bench_triton(args) -> list[str]:
    from workbench.kernels.dispatch import triton_installed

    if not torch.cuda.is_available():
        return ["(b) Triton replay vs transformers experts: skipped (no CUDA device in this run); the kernels are",
                "    checked against the references on CPU under Triton's interpreter instead:",
                "    TRITON_INTERPRET=1 python -m workbench.kernels.triton_check"]
    if not triton_installed():
        return ["(b) Triton replay vs transformers experts: skipped (triton is not installed)"]
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    from workbench.kernels.grouped import ExpertWeights, grouped_experts

    dev = torch.device("cuda")
    e, k, h, i = 128, 8, 2048, 768
    cfg = Qwen3MoeConfig(hidden_size=h, moe_intermediate_size=i, num_experts=e, num_experts_per_tok=k)
    cfg._experts_implementation = "grouped_mm"
    experts = Qwen3MoeExperts(cfg).to(dev, torch.bfloat16)
    with torch.no_grad():
        experts.gate_up_proj.normal_(0, 0.02)
        experts.down_proj.normal_(0, 0.02)
    gu, dn = experts.gate_up_proj, experts.down_proj
    ew = ExpertWeights(gu[:, :i].transpose(1, 2), gu[:, i:].transpose(1, 2), dn.transpose(1, 2), act="silu")
    buf = torch.empty(2 ** 28, dtype=torch.uint8, device=dev)
    t_copy = _cuda_time(lambda: buf.clone(), 10)
    bandwidth = 2 * buf.numel() / t_copy
    lines = [f"(b) {torch.cuda.get_device_name()}: E={e}, k={k}, H={h}, I={i}, bf16; copy bandwidth "
             f"{bandwidth / 1e9:,.0f} GB/s", "   T   transformers ms   triton ms   speedup   floor ms   triton/floor   max rel diff"]
    for t in (512, 1024, 2048, 4096):
        x = torch.randn(t, h, device=dev, dtype=torch.bfloat16)
        logits = torch.randn(t, e, device=dev)
        w, idx = torch.softmax(logits, -1).topk(k, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        with torch.no_grad():
            ref = experts(x, idx, w.to(x.dtype))
            got = grouped_experts(x, ew, idx, w, backend="triton")
            t_ref = _cuda_time(lambda: experts(x, idx, w.to(x.dtype)), 20)
            t_tri = _cuda_time(lambda: grouped_experts(x, ew, idx, w, backend="triton"), 20)
        active = int(torch.unique(idx).numel())
        floor = (active * 3 * h * i * 2 + 2 * t * h * 2) / bandwidth
        rel = float((got.float() - ref.float()).abs().max() / ref.float().abs().max())
        lines.append(f"{t:5d} {t_ref * 1e3:14.3f} {t_tri * 1e3:11.3f} {t_ref / t_tri:9.2f} {floor * 1e3:10.3f} "
                     f"{t_tri / floor:13.2f} {rel:14.1e}")
    return lines


def _cuda_time(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="replay benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer tokens and baseline samples (< 1 minute)")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--layer", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None, help="calibration tokens (default 2048; quick 512)")
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="replace the 'replay' section of RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.tokens = args.tokens or (512 if args.quick else 2048)
    args.baseline_sample = 20 if args.quick else 100
    args.repeats = 3 if args.quick else 5
    speedup, lines = bench_recombine(args)
    lines += [""] + bench_triton(args)
    print("\n".join(lines))
    if args.write:
        command = "python benchmarks/replay.py" + (" --quick" if args.quick else "")
        write_section("replay", command, lines + ["", f"recombine speedup: {speedup:.0f} x"])
    print(f"recombine speedup: {speedup:.0f} x")


if __name__ == "__main__":
    main()
