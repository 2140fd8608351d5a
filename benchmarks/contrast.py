"""Self-contrast decoding (SCMoE): ms per token against greedy, and exact-match accuracy on the
demo's held-out sums over a beta grid and weak routings. Everything interleaved in one run.

Usage: python benchmarks/contrast.py [--model demo] [--sample 300] [--repeats 3] [--write]

Latency: greedy (batch 1), SCMoE batched (strong and weak as two rows of one batch, one forward per
step) and the two-pass reference (two forwards, two caches), decoding the same prompts in turn,
``--max-new-tokens`` each; ms per generated token (prompt pass included) and ratios to greedy, in
this thread's CPU time (the target figure; a shared machine's other processes inflate wall time,
which is shown next to it). Target for the batched decoder: <= 1.25x greedy on CPU, batch 1.
"scmoe, general path" is the same decoder with the hook manager's lean path off
(``lm.probes.lean = False``: every router call through ``ProbeManager.decide`` and the seams).
The floor: SCMoE's own loop at batch 2 (contrast scores, step log) with no routing edit, i.e. what
any batched SCMoE pays before routing the weak row; and, per decoding forward step and per prompt
pass, the model alone at batch 1 and 2 (no hooks) against the SCMoE forward.
Accuracy: greedy vs SCMoE with the paper preset (``preset="scmoe"``: the reference code's prompt
tokens and EOS ban, beta 0.5, alpha 0.1, the rank-2 weak routing, and a random-expert weak routing as
the control), then the workbench default for every beta x weak routing, on ``--sample`` held-out
sums (``"37 + 45 ="``, answer on the first line, 6 tokens at most), next to the paper's figure.
``--write`` replaces the "self-contrast decoding" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from types import SimpleNamespace

import torch
from results import write_section

import workbench as wb
from workbench.contrast import generate, generate_greedy, generate_two_pass
from workbench.contrast.decode import StepLog, Stopper, _forward, encode_prompt
from workbench.contrast.evaluate import GREEDY, demo_tasks, evaluate, grid, scmoe
from workbench.contrast.scoring import scores_and_mask


def _model(source: str):
    from workbench.demo import DATA_DIR, checkpoint_available

    if source == "demo" and not checkpoint_available():
        from workbench.testing import tiny_model

        print("demo checkpoint absent: using the tiny random qwen3_moe (accuracy is meaningless)")
        return wb.wrap(*tiny_model("qwen3_moe"), source="tiny-qwen3_moe"), None
    lm = wb.load(source)
    heldout = DATA_DIR / "heldout.jsonl"
    return lm, heldout if source == "demo" and heldout.is_file() else None


def _prompts(heldout, n: int) -> list[str]:
    if heldout is None:
        return ["12 + 34 = 46\n20 + 30 =", "def add(a, b):", "The quick brown fox", "Der schnelle braune"][:n]
    rows = [json.loads(line) for line in heldout.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_label = {}
    for row in rows:  # one prompt per domain, in file order
        by_label.setdefault(row.get("label"), row["text"][:120])
    return list(by_label.values())[:n]


@torch.inference_mode()
def batch2_no_edit(lm, prompt: str, max_new_tokens: int) -> SimpleNamespace:
    """The floor of batched SCMoE: :func:`workbench.contrast.generate`'s loop (batch 2, contrast
    scores, step log, stopping) with both rows on the model's own routing (no edit, no hooks)."""
    stopper = Stopper(lm, max_new_tokens, None)
    prompt_ids = encode_prompt(lm, prompt)
    log, out_ids = StepLog(), []
    start = time.perf_counter()
    step_ids, cache = prompt_ids.expand(2, -1), None
    while True:
        logits, cache = _forward(lm, step_ids, cache)
        logp = torch.log_softmax(logits, dim=-1)
        score, plausible = scores_and_mask(logp[0], logp[1], 0.1, 0.5)
        token = score.argmax()
        log.add_pair(token, logp, score, plausible)
        out_ids.append(int(token))
        if stopper.done(out_ids):
            break
        step_ids = torch.full((2, 1), out_ids[-1], dtype=torch.long, device=prompt_ids.device)
    log.tensors()
    return SimpleNamespace(seconds=time.perf_counter() - start, num_tokens=len(out_ids))


def latency(lm, prompts, max_new_tokens: int, repeats: int, weak: str) -> tuple[dict, dict]:
    """Median over repeats of ms per generated token for each decoder, interleaved prompt by prompt:
    ``(cpu, wall)``. CPU time is this thread's (``time.thread_time`` around each call, tokenising
    included; torch runs on this thread with one thread), which other processes on a shared machine
    do not inflate; wall time is each :class:`Generation`'s own ``seconds``."""
    def general(p):  # the hooks' general per-row path (no lean path): what the lean path saves
        lm.probes.lean = False
        try:
            return generate(lm, p, max_new_tokens=max_new_tokens, weak=weak)
        finally:
            lm.probes.lean = True

    decoders = {"greedy": lambda p: generate_greedy(lm, p, max_new_tokens=max_new_tokens),
                "scmoe (batched)": lambda p: generate(lm, p, max_new_tokens=max_new_tokens, weak=weak),
                "scmoe, general path": general,
                "scmoe (two-pass)": lambda p: generate_two_pass(lm, p, max_new_tokens=max_new_tokens, weak=weak),
                "floor: batch 2, no edit": lambda p: batch2_no_edit(lm, p, max_new_tokens)}
    for run in decoders.values():
        run(prompts[0])  # warm-up
    cpu_rounds = {name: [] for name in decoders}
    wall_rounds = {name: [] for name in decoders}
    for r in range(repeats):
        totals = {name: [0.0, 0.0, 0] for name in decoders}
        for i, prompt in enumerate(prompts):
            names = list(decoders)
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:  # rotate the order prompt by prompt
                start = time.thread_time()
                g = decoders[name](prompt)
                totals[name][0] += time.thread_time() - start
                totals[name][1] += g.seconds
                totals[name][2] += g.num_tokens
        for name, (cpu, wall, tok) in totals.items():
            cpu_rounds[name].append(1000.0 * cpu / max(1, tok))
            wall_rounds[name].append(1000.0 * wall / max(1, tok))
    return ({name: statistics.median(v) for name, v in cpu_rounds.items()},
            {name: statistics.median(v) for name, v in wall_rounds.items()})


@torch.inference_mode()
def step_breakdown(lm, prompt: str, steps: int, repeats: int, weak: str) -> dict[str, float]:
    """ms of one decoding forward step (cache of ``prompt`` + a few tokens), interleaved: batch 1;
    batch 2 without any edit; batch 2 with another token in row 1 (rows on different experts, no
    edit); batch 2 with the weak routing on every row (one plan for all tokens); batch 2 with the
    weak routing on row 1 only (what SCMoE runs)."""
    from workbench.contrast.decode import encode_prompt
    from workbench.contrast.weak import on_row, weak_spec

    ids = encode_prompt(lm, prompt)
    spec = weak_spec(weak, lm)

    last = int(ids[0, -1])
    other = (last + lm.tokenizer.vocab_size // 2) % lm.tokenizer.vocab_size

    def run(batch: int, edit_spec=None, tokens=None) -> float:
        def body():
            _, cache = _forward(lm, ids.expand(batch, -1), None)
            token = torch.tensor([[t] for t in tokens]) if tokens else torch.full((batch, 1), last)
            start = time.thread_time()
            for _ in range(steps):
                _, cache = _forward(lm, token, cache)
            return 1000.0 * (time.thread_time() - start) / steps
        if edit_spec is None:
            return body()
        with wb.edit(lm, edit_spec):
            return body()

    # SCMoE's two rows read the same token but route it to different experts, so each MoE layer
    # runs (and loads the weights of) more experts than with two identical rows; two different
    # tokens without any edit show that cost without the edit's hooks
    cases = {"batch 1": lambda: run(1), "batch 2, no edit": lambda: run(2),
             "batch 2, another token in row 1, no edit": lambda: run(2, tokens=[last, other]),
             "batch 2, weak on all rows": lambda: run(2, spec),
             "batch 2, weak on row 1 (SCMoE)": lambda: run(2, on_row(spec, 1))}
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            times[name].append(case())
    return {name: statistics.median(v) for name, v in times.items()}


@torch.inference_mode()
def prompt_breakdown(lm, prompts, repeats: int, weak: str) -> dict[str, float]:
    """ms of the prompt pass (median over repeats, mean over prompts): batch 1; batch 2 without any
    edit; batch 2 with the weak routing on row 1 (SCMoE)."""
    from workbench.contrast.decode import encode_prompt
    from workbench.contrast.weak import on_row, weak_spec

    ids = [encode_prompt(lm, p) for p in prompts]
    spec = on_row(weak_spec(weak, lm), 1)

    def run(batch: int, edited: bool = False) -> float:
        start = time.thread_time()
        for i in ids:
            if edited:
                with wb.edit(lm, spec):
                    lm.model(input_ids=i.expand(batch, -1), use_cache=True, logits_to_keep=1)
            else:
                lm.model(input_ids=i.expand(batch, -1), use_cache=True, logits_to_keep=1)
        return 1000.0 * (time.thread_time() - start) / len(ids)

    cases = {"batch 1": lambda: run(1), "batch 2, no edit": lambda: run(2),
             "batch 2, weak on row 1 (SCMoE)": lambda: run(2, True)}
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            times[name].append(case())
    return {name: statistics.median(v) for name, v in times.items()}


PAPER = "paper (Shi et al., Mixtral-8x7B, GSM8K, 8-shot CoT): greedy 61.79% -> SCMoE 66.94% (+5.15 points)"


def _accuracy_lines(result, title: str) -> list[str]:
    """One line per method of an evaluation: accuracy, ms/token and the paired difference to greedy."""
    summary = result.summary()
    paired = result.compare("greedy").set_index("method")
    lines = [title]
    for row in summary.itertuples():
        line = f"  {row.method:20s} accuracy {row.accuracy * 100:5.1f}%   {row.ms_per_token:6.2f} ms/token"
        if row.method in paired.index:
            c = paired.loc[row.method]
            line += (f"   vs greedy {c.delta * 100:+5.1f} ± {c.se * 100:.1f} points "
                     f"(fixed {int(c.fixed)}, broken {int(c.broken)})")
        lines.append(line)
    return lines


def _verdict(preset) -> str:
    """Whether the paper's gain replicates on this model: the preset's SCMoE against greedy and the
    random-expert control, with the paired standard error."""
    paired = preset.compare("greedy").set_index("method")
    c, r = paired.loc["scmoe"], paired.loc["scmoe random"]
    if c.delta > 2 * c.se and c.delta > r.delta + 2 * max(r.se, 1e-9):
        word = "replicates here: SCMoE beats greedy and the random-expert control by more than the noise"
    elif c.delta > 2 * c.se:
        word = "replicates only in part: SCMoE beats greedy, but no more than the random-expert control does"
    else:
        word = "does not replicate on this model: SCMoE is within noise of (or below) greedy"
    return (f"the paper's +5.15 points {word} (preset: {c.delta * 100:+.1f} ± {c.se * 100:.1f} points; "
            f"random-expert control {r.delta * 100:+.1f} ± {r.se * 100:.1f})")


def _latency_lines(lm, args, weak, cpu, wall, steps, prompt_ms, prompts) -> list[str]:
    lines = [(f"latency: {args.prompts} prompts x {args.max_new_tokens} new tokens, weak={weak}, beta=0.5, "
              f"median of {args.repeats} interleaved rounds, ms per generated token (prompt pass included); "
              "CPU = this thread's CPU time (the target figure: other processes on the machine do not inflate it)")]
    for name in cpu:
        lines.append(f"  {name:23s} CPU {cpu[name]:7.2f} ms/token  ratio {cpu[name] / cpu['greedy']:.2f}x   "
                     f"wall {wall[name]:7.2f} ms/token  ratio {wall[name] / wall['greedy']:.2f}x")
    ratio = cpu["scmoe (batched)"] / cpu["greedy"]
    lines.append(f"  target for batched SCMoE <= 1.25x greedy on CPU, batch 1: {'met' if ratio <= 1.25 else 'not met'}"
                 f" ({ratio:.2f}x; the no-edit batch-2 floor alone is "
                 f"{cpu['floor: batch 2, no edit'] / cpu['greedy']:.2f}x)")
    lines.append("one decoding forward step (model only, median, CPU ms):")
    for name, value in steps.items():
        lines.append(f"  {name:42s} {value:7.2f} ms   ratio {value / steps['batch 1']:.2f}x")
    apart = steps["batch 2, another token in row 1, no edit"] - steps["batch 2, no edit"]
    hooks = steps["batch 2, weak on row 1 (SCMoE)"] - steps["batch 2, another token in row 1, no edit"]
    lines.append(f"  SCMoE step over batch 2 with identical rows: {apart:+.2f} ms from rows on different experts, "
                 f"{hooks:+.2f} ms from the per-row edit (the hooks' lean fused rank-row path, probes/hooks.py)")
    lines.append(f"prompt pass ({len(prompts)} prompts, model only (SCMoE: entering the edit included), median of "
                 "mean CPU ms per prompt):")
    for name, value in prompt_ms.items():
        lines.append(f"  {name:42s} {value:7.2f} ms   ratio {value / prompt_ms['batch 1']:.2f}x")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="demo")
    parser.add_argument("--sample", type=int, default=300, help="held-out sums for the accuracy table")
    parser.add_argument("--prompts", type=int, default=8, help="prompts for the latency measurement")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--betas", default="0.25,0.5,1.0")
    parser.add_argument("--weaks", default="rank2,top1,random")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm, heldout = _model(args.model)
    weak = "rank2" if lm.num_experts > 2 else "rank1"
    start = time.perf_counter()
    prompts = _prompts(heldout, args.prompts)
    cpu, wall = latency(lm, prompts, args.max_new_tokens, args.repeats, weak)
    steps = step_breakdown(lm, prompts[0], 16, 2 * args.repeats + 1, weak)
    prompt_ms = prompt_breakdown(lm, prompts, 2 * args.repeats + 1, weak)
    betas = [float(b) for b in args.betas.split(",")]
    weaks = [w for w in args.weaks.split(",") if w]
    tasks = demo_tasks(args.sample)
    result = evaluate(lm, tasks, grid(betas, weaks), max_new_tokens=6, stop="\n", progress=False)
    # the paper preset: the reference code's prompt tokens and EOS ban, its defaults beta=0.5, alpha=0.1
    preset = evaluate(lm, tasks, [GREEDY, scmoe(0.5, 0.1, weak), scmoe(0.5, 0.1, "random", name="scmoe random")],
                      max_new_tokens=6, stop="\n", progress=False, preset="scmoe")
    lines = [(f"model: {lm.source} ({lm.adapter.describe(lm.config)}), {args.threads} thread(s), "
              f"{platform.processor() or platform.machine()}, torch {torch.__version__}")]
    lines += _latency_lines(lm, args, weak, cpu, wall, steps, prompt_ms, prompts)
    n = len(tasks)
    lines += _accuracy_lines(preset, f"accuracy, paper preset (preset='scmoe': the tokenizer's own special tokens, so "
                                     f"no BOS on the demo; EOS banned for SCMoE, greedy stops at it): exact match on "
                                     f"{n} held-out sums, 6 new tokens, stop at newline")
    lines += _accuracy_lines(result, f"accuracy, workbench default (BOS first, stop at EOS), beta x weak grid, "
                                     f"alpha=0.1, same {n} sums")
    lines.append("  (± = paired standard error; differences under about 2 SE are noise)")
    lines.append(f"  {PAPER}")
    lines.append(f"  {_verdict(preset)}")
    lines.append(f"(total {time.perf_counter() - start:.0f} s; machine load average at the end "
                 f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: wall-clock ratios are noisy on a busy machine)")
    print("\n".join(lines))
    print(f"scmoe latency ratio: CPU {cpu['scmoe (batched)'] / cpu['greedy']:.2f}x, wall "
          f"{wall['scmoe (batched)'] / wall['greedy']:.2f}x (two-pass CPU {cpu['scmoe (two-pass)'] / cpu['greedy']:.2f}x)")
    if args.write:
        write_section("self-contrast decoding", " ".join(["python benchmarks/contrast.py", *sys.argv[1:]]), lines)


if __name__ == "__main__":
    main()
