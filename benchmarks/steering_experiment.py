"""MoTE-style steering on the demo model: German-linked experts off vs as many random experts off.

Usage: python benchmarks/steering_experiment.py [--model demo] [--a german] [--b english] [--tops 10,5,20]
       [--per-set 40] [--prompt-tokens 16] [--new-tokens 24] [--seeds 3] [--out DIR] [--write]

1. Prompt sets: the first ``--prompt-tokens`` tokens of ``--per-set`` held-out documents of each
   label (``workbench/demo/data/heldout.jsonl``).
2. fTRI contrast of set A vs set B (per-prompt activation rates, Welch's t, permutation p).
3. The experiment on set A's prompts (greedy, ``--new-tokens`` tokens): baseline, top-N off, N
   random experts off per seed, top-N on. Behaviour = the continuation is classified as A by a
   character n-gram classifier fitted on the full held-out texts of A and B; a second, independent
   score counts continuations whose stop words say ``--a`` (e.g. German).
4. Quality: held-out perplexity of B and other domains under every condition.
5. The same top-N and random controls with the other switch-off semantics (slot left empty), and
   the other N values of ``--tops`` (a dose-response).

``--write`` replaces the "expert steering" section of benchmarks/RESULTS.md; ``--out`` keeps the
CSVs and the two figures (HTML). Without the demo checkpoint it runs on a tiny random Qwen3-MoE
(the figures then mean nothing; the point is that the pipeline runs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import workbench as wb
from workbench import steering
from workbench.steering.behaviour import detect_language

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402


def _model(source: str):
    from workbench.demo import checkpoint_available

    if source == "demo" and not checkpoint_available():
        from workbench.testing import tiny_model

        print("NOTE: demo checkpoint absent; running on a tiny random Qwen3-MoE (figures are meaningless)")
        return wb.wrap(*tiny_model("qwen3_moe"), source="tiny-qwen3_moe"), False
    return wb.load(source), True


def _rows(path: str | None):
    return steering.read_jsonl_texts(path) if path else steering.demo_rows(fallback=True)


def _experiment(lm, sets, contrast, behaviour, quality, args, n, mode, conditions):
    """One experiment and its report lines (plus the stop-word check)."""
    top = contrast.top(n)
    if len(top) < n:  # fewer than n experts with a positive contrast: fill up in ranked order
        top = [(int(r.layer), int(r.expert)) for r in contrast.table.head(n).itertuples()]
    exp = steering.run_experiment(lm, sets[args.a], top, behaviour, seeds=range(args.seeds), mode=mode,
                                  quality=quality, max_new_tokens=args.new_tokens, conditions=conditions,
                                  generation=args.generation)
    conts = exp.continuations
    conts["stopwords_a"] = [detect_language(t) == args.a for t in conts.continuation]
    stop = conts.groupby("condition", sort=False).stopwords_a.mean()
    base = float(stop.get("baseline", float("nan")))
    total = len(lm.moe_layers) * lm.num_experts
    lines = [f"--- top-N = {n} ({n / total:.1%} of {total} routed experts), switch-off mode {mode} ---",
             *exp.report_lines(),
             f"stop-word check (share of continuations whose stop words say {args.a}): " + ", ".join(
                 f"{c} {v:.2f}" + (f" ({(v - base) / base:+.0%})" if base > 0 else "") for c, v in stop.items()),
             ""]
    return exp, lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--heldout", default=None, help="JSONL of {text, label} (default: the demo's held-out set)")
    p.add_argument("--a", default="german")
    p.add_argument("--b", default="english")
    p.add_argument("--tops", default="10,5,20", help="N values; the first gets the full experiment")
    p.add_argument("--per-set", type=int, default=40)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--quality", default="english,french,code", help="labels for the perplexity check")
    p.add_argument("--quality-docs", type=int, default=12)
    p.add_argument("--permutations", type=int, default=2000)
    p.add_argument("--repetition-penalty", type=float, default=None, help="passed to generate (default: none)")
    p.add_argument("--out", default=None, help="folder for the first experiment's CSVs and figures")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    args.generation = {} if args.repetition_penalty is None else {"repetition_penalty": args.repetition_penalty}
    torch.set_num_threads(1)
    start = time.time()
    lm, real = _model(args.model)
    rows = _rows(args.heldout)
    sets = steering.prompt_sets(rows, lm.tokenizer, [args.a, args.b], per_set=args.per_set,
                                prompt_tokens=args.prompt_tokens, min_tokens=None if len(rows) > 50 else 2)
    contrast = steering.find_experts(lm, sets, a=args.a, b=args.b, permutations=args.permutations)
    full = {lab: [r["text"] for r in rows if r.get("label") == lab] for lab in (args.a, args.b)}
    behaviour = steering.set_behaviour(full[args.a], full[args.b], name=f"continuation classified as {args.a} "
                                       f"(char n-gram naive Bayes, {args.a} vs {args.b})")
    quality = {lab: [r["text"] for r in rows if r.get("label") == lab][:args.quality_docs]
               for lab in args.quality.split(",") if any(r.get("label") == lab for r in rows)}
    tops = [int(x) for x in args.tops.split(",")]
    head = contrast.table.head(max(tops))
    gen_text = f" {args.generation}" if args.generation else ""
    lines = [
        f"model: {lm.name or lm.source} ({len(lm.moe_layers)} MoE layers x {lm.num_experts} experts, k={lm.top_k}); "
        f"{'demo checkpoint' if real else 'TINY RANDOM MODEL (meaningless)'}",
        f"prompts: {len(sets[args.a])} {args.a} / {len(sets[args.b])} {args.b}, first {args.prompt_tokens} tokens "
        f"of held-out documents; {args.new_tokens} new tokens, greedy{gen_text}; {args.seeds} random seeds",
        f"{args.a}-linked experts by Welch t ({args.permutations} permutations):",
        "  " + ", ".join(f"L{r.layer}/E{r.expert} (d={r.effect:.1f}, p={r.p:.2g})" for r in head.itertuples()),
        "",
    ]
    main_exp, block = _experiment(lm, sets, contrast, behaviour, quality, args, tops[0], "next_best",
                                  steering.CONDITIONS)
    lines += block
    _, block = _experiment(lm, sets, contrast, behaviour, quality, args, tops[0], "empty",
                           ("baseline", "top_off", "random_off"))
    lines += block
    for n in tops[1:]:
        _, block = _experiment(lm, sets, contrast, behaviour, quality, args, n, "next_best",
                               ("baseline", "top_off", "random_off"))
        lines += block
    lines += ["MoTE (DeepSeek-R1, refusals): top-10 of 14,848 experts off -52%, 10 random off about -9%.",
              f"wall time {time.time() - start:.0f} s on 1 CPU thread"]
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        main_exp.save(out)
        contrast.save(out / "experts.csv")
        contrast.plot().write_html(out / "contrast.html")
        main_exp.plot().write_html(out / "experiment.html")
        print(f"wrote {out}")
    if args.write:
        command = "python benchmarks/steering_experiment.py " + " ".join(sys.argv[1:])
        write_section("expert steering", command.replace(" --write", "").strip(), lines)
        print("updated benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
