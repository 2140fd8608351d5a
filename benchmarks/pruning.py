"""Expert pruning and dynamic skipping (Lu et al.) on the demo model: quality, calls saved, speed.

Usage: python benchmarks/pruning.py [--quick] [--model demo|PATH] [--per-domain 8] [--eval-per-domain N]
                                    [--keeps 12,8,4] [--threads 1] [--seed 0] [--write]

1. Calibration: the demo's held-out documents split per domain into a calibration part
   (``--per-domain`` documents each) and a disjoint evaluation part (``demo_split``, seed 0).
2. Pruning at each ``r`` of ``--keeps`` with enumeration (all C(16, 16 - r) drop sets per layer,
   scored through recombine), the least-frequently-routed baseline and the random baseline (seed 0):
   relative loss per layer (``L(S) / sum_b ||Z_b||``) and the enumeration's CPU time per layer.
3. Skipping: beta per layer (median w2/w1 on the calibration tokens) and the share of expert calls
   skipped there; also beta calibrated on the r=12 pruned model, for pruning + skipping.
4. Held-out perplexity per domain (evaluation part): original, every pruned model, skipping,
   pruned + skipping; expert calls per token actually routed; expert parameters kept.
5. The paper preset (``preset="lu2024"``: Lu et al.'s code's calibration, documents shuffled with seed
   42, joined, cut into 2,048-token blocks, remainder dropped) on the same calibration documents, at
   ``--preset-keeps`` (default the first r): the experts it keeps against the default's, its loss
   measured on the default's calibration units, the skipping thresholds it gives, and held-out
   perplexity next to the default, frequency and random, with the paper's figures. The demo's context
   is 1,024 positions, shorter than the preset's blocks (the reference would run them anyway), so the
   preset also runs with 1,024-token blocks to tell the two effects apart.
6. Speed, CPU time (fair on a busy machine), best of N interleaved rounds: a forward pass of 512
   tokens through transformers for the original, the pruned models and the skip edit; and one MoE
   layer's routed experts through the workbench's grouped kernel (which does no work for empty
   slots) under the model's own routing vs the skip routing, on cached layer inputs.

``--write`` replaces the "expert pruning and skipping" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from results import write_section

import workbench as wb
from workbench import pruning

SECTION = "expert pruning and skipping"
PAPER = ("paper (Lu et al., Mixtral-8x7B, 128 x 2048 tokens of C4): r=6 of 8 ~ -2.9 points average accuracy, "
         "r=4 ~ -7.1 points; ~1.2x / 1.27x faster; skipping 1.2-1.33x overall")


def _preset_lines(lm, texts, ev, pruner, results, keeps, seed, wide) -> list[str]:
    """The paper preset next to the default on the same documents (see the module docstring, 5)."""
    import warnings

    from workbench.pruning import StreamBlocks

    presets = {"lu2024": "lu2024", "lu2024, 1024-token blocks": StreamBlocks(block_size=1024)}
    lines = ["", "paper preset (preset='lu2024') on the same calibration documents"]
    conditions = {}
    for name, preset in presets.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # blocks past the context: said in the docstring
            other = pruning.Pruner(lm, texts, preset=preset, progress=False)
            units = other.describe_units()
            beta = pruning.calibrate_skipping(lm, texts, preset=preset, progress=False).beta
        lines.append(f"  {name}: {units.split(': ', 1)[-1]}")
        lines.append("    skipping beta per layer: " + ", ".join(f"L{k} {v:.3f}" for k, v in beta.items()))
        for r in keeps:
            res = other.prune(keep=r, seed=seed)
            ref = results[(r, "enumerate")]
            moved = [len(set(ref.kept[x]) - set(res.kept[x])) for x in lm.moe_layers]
            on_default = [float(pruner.scorer(c.layer)([list(c.dropped)])[0]) / pruner.scorer(c.layer).norm
                          for c in res.layers]
            lines.append(f"    r={r}: experts kept differently from the default, per layer: {moved}; its relative "
                         f"loss on the default's units {sum(on_default) / len(on_default):.3f} (default's own "
                         f"{sum(c.relative_loss for c in ref.layers) / len(ref.layers):.3f})")
            conditions[f"{name} r={r}"] = (res.apply(lm), [])
    long = pruning.compare(conditions, ev, max_tokens=512)
    mean = long[long.domain == "mean"].set_index("condition").ppl
    lines.append("  held-out mean perplexity (the same evaluation documents as above):")
    for r in keeps:
        row = [f"original {wide.loc['mean', 'original']:.2f}"]
        row += [f"{m} {wide.loc['mean', f'{m} r={r}']:.2f}" for m in ("enumerate", "frequency", "random")]
        row += [f"{n} {mean[f'{n} r={r}']:.2f}" for n in presets]
        lines.append(f"    r={r}: " + "; ".join(row))
    lines.append(f"  {PAPER}")
    return lines


def _verdict(wide, keeps, times, kernel_ratio: float, calls) -> list[str]:
    """What of the paper's findings replicates here: the loss-based choice against the two baselines
    (held-out mean perplexity), the speed of pruning and of skipping."""
    mean = wide.loc["mean"]
    lines = ["", "against the paper (Lu et al.): what replicates on this model"]
    for r in keeps:
        e, f, rnd = mean[f"enumerate r={r}"], mean[f"frequency r={r}"], mean[f"random r={r}"]
        word = "replicates, it beats both" if e < min(f, rnd) else "does not replicate"
        lines.append(f"  r={r}: the loss-based choice against the frequency and random baselines {word} (held-out "
                     f"mean perplexity, not the paper's task accuracy: {mean['original']:.2f} -> enumerate {e:.2f}, "
                     f"frequency {f:.2f}, random {rnd:.2f})")
    pruned = times["original"] / times[f"pruned r={keeps[0]}"]
    skip = times["original"] / times["skip (edit hooks)"]
    lines.append(f"  speed of pruning (paper ~1.2x at r=6 of 8): {pruned:.2f}x at r={keeps[0]} of 16 here "
                 f"({'similar' if pruned >= 1.15 else 'does not replicate: fewer experts in memory barely changes a CPU forward of this size'})")
    lines.append(f"  speed of skipping (paper 1.2-1.33x overall): {skip:.2f}x through transformers' experts with the edit "
                 f"hooks ({1 - calls['skip'] / calls['original']:.0%} fewer expert calls, "
                 f"{'similar' if skip >= 1.15 else 'does not replicate: the skipped slots still run, at weight 0'}); "
                 f"{kernel_ratio:.2f}x for the routed experts in the workbench grouped kernel, where empty slots cost nothing")
    return lines


def _cpu(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def _speed(conditions: dict, tokens: int, repeats: int) -> dict:
    ids = torch.randint(3, 1000, (1, tokens), generator=torch.Generator().manual_seed(0))
    times = {n: float("inf") for n in conditions}

    def run(lm, specs):
        with torch.no_grad():
            if specs:
                with wb.edit(lm, *specs):
                    lm.model(input_ids=ids, use_cache=False)
            else:
                lm.model(input_ids=ids, use_cache=False)

    for name, (lm, specs) in conditions.items():  # warm-up
        run(lm, specs)
    for _ in range(repeats):  # interleaved rounds: load changes hit every condition alike
        for name, (lm, specs) in conditions.items():
            times[name] = min(times[name], _cpu(lambda lm=lm, specs=specs: run(lm, specs), 1))
    return times


def _kernel_speed(lm, cache, beta: float, repeats: int) -> tuple[float, float, float]:
    from workbench.kernels.grouped import grouped_experts
    from workbench.kernels.routing import route, skip
    from workbench.replay.weights import expert_weights

    ew = expert_weights(lm, cache.layer)
    d = route(cache.logits, lm.rule, lm.top_k, None)
    s = skip(d, beta)
    x = cache.x
    with torch.no_grad():
        full = _cpu(lambda: grouped_experts(x, ew, d.idx, d.w, d.valid, backend="torch"), repeats)
        skipped = _cpu(lambda: grouped_experts(x, ew, s.idx, s.w, s.valid, backend="torch"), repeats)
    return full, skipped, 1 - float(s.valid.sum()) / float(d.valid.sum())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="expert pruning and skipping benchmark")
    parser.add_argument("--quick", action="store_true", help="2 calibration docs per domain, r=12 only")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--per-domain", type=int, default=None, help="calibration documents per domain (8)")
    parser.add_argument("--eval-per-domain", type=int, default=None, help="evaluation documents per domain (rest)")
    parser.add_argument("--keeps", default=None, help="comma-separated r (default 12,8,4)")
    parser.add_argument("--preset-keeps", default=None, help="r for the paper preset (default: the first r)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    per_domain = args.per_domain or (2 if args.quick else 8)
    keeps = [int(x) for x in (args.keeps or ("12" if args.quick else "12,8,4")).split(",")]
    eval_per_domain = args.eval_per_domain or (4 if args.quick else None)

    lm = wb.load(args.model)
    cal, ev = pruning.demo_split(per_domain, eval_per_domain, seed=args.seed)
    texts = [r["text"] for r in cal]
    lines = [f"model: {args.model} ({lm.adapter.name}, E={lm.num_experts}, k={lm.top_k}, "
             f"{len(lm.moe_layers)} MoE layers); torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
             f"CPU ({platform.machine()}); times are CPU seconds",
             f"calibration: {len(cal)} held-out documents ({per_domain} per domain); evaluation: {len(ev)} other "
             f"held-out documents; seed {args.seed}"]
    pruner = pruning.Pruner(lm, texts, progress=False)
    capture_s = _cpu(lambda: pruner.caches, 1)
    lines.append(f"calibration tokens: {pruner.num_tokens}, in {pruner.scorer(lm.moe_layers[0]).num_batches} "
                 f"batches of 8 chunks; capture of all layers with every expert's output: {capture_s:.1f} s")

    results = {}
    lines += ["", "relative loss per layer, L(S) / sum_b ||Z_b|| (lower is better); enumeration time per layer",
              "   r  method      " + "  ".join(f"layer {x:>2}" for x in lm.moe_layers) + "    mean  search"]
    for r in keeps:
        for method in ("enumerate", "frequency", "random"):
            start = time.process_time()
            res = pruner.prune(keep=r, method=method, seed=args.seed)
            spent = time.process_time() - start
            results[(r, method)] = res
            rel = [c.relative_loss for c in res.layers]
            search = (f"{res.layers[0].candidates:,} drop sets/layer, {spent / len(res.layers):.2f} s/layer"
                      if method == "enumerate" else "")
            lines.append(f"  {r:2d}  {method:10s}  " + "  ".join(f"{v:8.3f}" for v in rel)
                         + f"  {sum(rel) / len(rel):6.3f}  {search}")

    skip_orig = pruning.calibrate_skipping(lm, texts, progress=False)
    base = results[(keeps[0], "enumerate")]
    pruned_base = base.apply(lm)
    skip_pruned = pruning.calibrate_skipping(pruned_base, texts, progress=False)
    table = skip_orig.to_dataframe()
    lines += ["", "skipping thresholds (median w2/w1 on the calibration tokens) and expert calls skipped there",
              f"  layer   beta   skipped   (on the r={keeps[0]} pruned model: beta, skipped)"]
    pt = skip_pruned.to_dataframe()
    for row, prow in zip(table.itertuples(), pt.itertuples()):
        lines.append(f"  {row.layer:5d}  {row.beta:5.3f}  {row.skip_rate:7.1%}   ({prow.beta:5.3f}, {prow.skip_rate:.1%})")

    conditions = {"original": (lm, [])}
    pruned_models = {}
    for (r, method), res in results.items():
        pruned_models[(r, method)] = pruned_base if res is base else res.apply(lm)
        conditions[f"{method} r={r}"] = (pruned_models[(r, method)], [])
    conditions["skip"] = (lm, [skip_orig.spec()])
    conditions[f"enumerate r={keeps[0]} + skip"] = (pruned_base, [skip_pruned.spec()])
    long = pruning.compare(conditions, ev, max_tokens=512)
    wide = pruning.ppl_table(long)
    names = list(wide.columns)
    lines += ["", "held-out perplexity per domain (evaluation documents, <= 512 tokens each)",
              "condition".ljust(26) + "".join(f"{d[:8]:>9}" for d in wide.index)]
    for name in names:
        lines.append(name.ljust(26) + "".join(f"{wide.loc[d, name]:9.2f}" for d in wide.index))
    preset_keeps = [int(x) for x in (args.preset_keeps or str(keeps[0])).split(",")]
    lines += _preset_lines(lm, texts, ev, pruner, results, preset_keeps, args.seed, wide)
    calls = long[long.domain == "mean"].set_index("condition").calls_per_token
    params = pruning.evaluate.expert_parameters
    full_params = params(lm)
    lines += ["", "expert calls per token (summed over MoE layers) and routed-expert parameters kept",
              f"  original: {calls['original']:.2f} calls, {full_params:,} parameters"]
    for r in keeps:
        p = params(pruned_models[(r, "enumerate")])
        lines.append(f"  pruned r={r}: {calls[f'enumerate r={r}']:.2f} calls, {p:,} parameters ({p / full_params:.0%})")
    lines.append(f"  skip: {calls['skip']:.2f} calls ({1 - calls['skip'] / calls['original']:.1%} fewer)")
    lines.append(f"  enumerate r={keeps[0]} + skip: {calls[f'enumerate r={keeps[0]} + skip']:.2f} calls")

    speed_conditions = {"original": (lm, [])}
    for r in keeps:
        speed_conditions[f"pruned r={r}"] = (pruned_models[(r, "enumerate")], [])
    speed_conditions["skip (edit hooks)"] = (lm, [skip_orig.spec()])
    speed_conditions[f"pruned r={keeps[0]} + skip"] = (pruned_base, [skip_pruned.spec()])
    times = _speed(speed_conditions, 512, args.repeats)
    lines += ["", f"speed: forward pass of 512 tokens through transformers ({lm.model.config._experts_implementation} "
              f"experts), CPU s, best of {args.repeats} interleaved rounds; ratio = original / condition"]
    for name, t in times.items():
        lines.append(f"  {name:24s} {t * 1e3:8.1f} ms  {times['original'] / t:5.2f}x")
    layer = lm.moe_layers[len(lm.moe_layers) // 2]
    full, skipped, share = _kernel_speed(lm, pruner.caches[layer], skip_orig.beta[layer], args.repeats)
    lines += [f"routed experts of layer {layer} on its {pruner.caches[layer].num_tokens} calibration tokens, "
              "workbench grouped kernel (empty slots cost nothing):",
              f"  model's routing {full * 1e3:.1f} ms; skip routing ({share:.1%} of calls skipped) "
              f"{skipped * 1e3:.1f} ms -> {full / skipped:.2f}x",
              f"machine load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"]
    lines += _verdict(wide, keeps, times, full / skipped, calls)
    print("\n".join(lines))
    if args.write:
        command = "OMP_NUM_THREADS=1 python benchmarks/pruning.py" + (" --quick" if args.quick else "")
        write_section(SECTION, command, lines)


if __name__ == "__main__":
    main()
