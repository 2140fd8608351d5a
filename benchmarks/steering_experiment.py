"""Expert steering on the demo model, our default method and the SteerMoE preset, each against random.

Usage: python benchmarks/steering_experiment.py [--model demo] [--a german] [--b english] [--tops 10,5,20]
       [--per-set 40] [--windows 3] [--prompt-tokens 16] [--new-tokens 16] [--seeds 6] [--activate 4]
       [--out DIR] [--write]

1. Prompt sets: ``--windows`` windows of ``--prompt-tokens`` tokens from each of ``--per-set``
   held-out documents of each label (``workbench/demo/data/heldout.jsonl``); effect intervals
   resample documents, not windows.
2. The contrast of set A vs set B: Welch's t of per-prompt activation rates (permutation p) and,
   beside it, SteerMoE's risk difference of pooled token activation rates; how alike they rank.
3. ``preset="workbench"`` on set A's prompts (greedy, ``--new-tokens`` tokens): baseline, top-N off
   (Mask), N random off per seed, top-N on (Offset; and Force, the old mechanism, for comparison).
4. ``preset="steermoe"``: set B's ``--activate`` most linked experts on and set A's top-N off in one
   Offset edit, against as many random experts on and off per seed.
5. Behaviour = the continuation is classified as A by a character n-gram classifier fitted on the
   full held-out texts of A and B; effect sizes (steered minus random, steered minus baseline) with
   95% bootstrap intervals; a second, independent score counts continuations whose stop words say
   ``--a``. Quality: held-out perplexity of B and other domains under every condition.
6. The other N values of ``--tops`` for both methods (a dose-response) and the other switch-off
   semantics (slot left empty) for ours.

``--write`` replaces the "expert steering" section of benchmarks/RESULTS.md; ``--out`` keeps the
CSVs and the figures (HTML). Without the demo checkpoint it runs on a tiny random Qwen3-MoE
(the figures then mean nothing; the point is that the pipeline runs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

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


def _experiment(lm, sets, contrast, behaviour, quality, args, n, mode, conditions, preset="workbench",
                on_mechanism=None):
    """One experiment and its report lines (plus the stop-word check)."""
    top = contrast.top(n, by=steering.get_preset(preset).rank_by)
    if len(top) < n:  # fewer than n experts with a positive contrast: fill up in ranked order
        top = [(int(r.layer), int(r.expert)) for r in contrast.table.head(n).itertuples()]
    options = {}
    if preset == "steermoe":
        options["activate"], _ = steering.select_steermoe(contrast, args.activate, 0, lm.top_k)
    exp = steering.run_experiment(lm, sets[args.a], top, behaviour, seeds=range(args.seeds), mode=mode,
                                  quality=quality, max_new_tokens=args.new_tokens, conditions=conditions,
                                  generation=args.generation, preset=preset, on_mechanism=on_mechanism,
                                  progress=False, **options)
    conts = exp.continuations
    conts["stopwords_a"] = [detect_language(t) == args.a for t in conts.continuation]
    stop = conts.groupby("condition", sort=False).stopwords_a.mean()
    base = float(stop.get("baseline", float("nan")))
    total = len(lm.moe_layers) * lm.num_experts
    what = f"switch-off mode {mode}" if preset == "workbench" else f"{len(exp.activated)} set-B experts on"
    lines = [f"--- preset {preset}: top-N = {n} ({n / total:.1%} of {total} routed experts), {what}"
             f"{f', top_on by {on_mechanism}' if on_mechanism else ''} ---",
             *exp.report_lines(),
             f"stop-word check (share of continuations whose stop words say {args.a}): " + ", ".join(
                 f"{c} {v:.2f}" + (f" ({(v - base) / base:+.0%})" if base > 0 else "") for c, v in stop.items()),
             ""]
    return exp, lines


def _agreement(contrast, n: int) -> str:
    table = contrast.table
    rho = spearmanr(table.t, table.risk_diff).correlation
    overlap = len(set(contrast.top(n)) & set(contrast.top(n, by="risk_diff")))
    return (f"Welch t vs risk difference over all experts: Spearman {rho:.3f}; top-{n} overlap {overlap}/{n}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--heldout", default=None, help="JSONL of {text, label} (default: the demo's held-out set)")
    p.add_argument("--a", default="german")
    p.add_argument("--b", default="english")
    p.add_argument("--tops", default="10,5,20", help="N values; the first gets the full experiment")
    p.add_argument("--per-set", type=int, default=40)
    p.add_argument("--windows", type=int, default=3, help="prompts per document")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--activate", type=int, default=steering.presets.DEFAULT_ACTIVATE,
                   help="steermoe: set-B experts switched on")
    p.add_argument("--quality", default="english,french,code", help="labels for the perplexity check")
    p.add_argument("--quality-docs", type=int, default=12)
    p.add_argument("--permutations", type=int, default=2000)
    p.add_argument("--repetition-penalty", type=float, default=None, help="passed to generate (default: none)")
    p.add_argument("--out", default=None, help="folder for the first experiments' CSVs and figures")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    args.generation = {} if args.repetition_penalty is None else {"repetition_penalty": args.repetition_penalty}
    torch.set_num_threads(1)
    start = time.time()
    lm, real = _model(args.model)
    rows = _rows(args.heldout)
    sets = steering.prompt_sets(rows, lm.tokenizer, [args.a, args.b], per_set=args.per_set,
                                prompt_tokens=args.prompt_tokens, min_tokens=None if len(rows) > 50 else 2,
                                windows=args.windows)
    contrast = steering.find_experts(lm, sets, a=args.a, b=args.b, permutations=args.permutations)
    full = {lab: [r["text"] for r in rows if r.get("label") == lab] for lab in (args.a, args.b)}
    behaviour = steering.set_behaviour(full[args.a], full[args.b], name=f"continuation classified as {args.a} "
                                       f"(char n-gram naive Bayes, {args.a} vs {args.b})")
    quality = {lab: [r["text"] for r in rows if r.get("label") == lab][:args.quality_docs]
               for lab in args.quality.split(",") if any(r.get("label") == lab for r in rows)}
    tops = [int(x) for x in args.tops.split(",")]
    head = contrast.table.head(max(tops))
    by_rd = contrast.table.sort_values("risk_diff", ascending=False).head(max(tops))
    on, _ = steering.select_steermoe(contrast, args.activate, 0, lm.top_k)
    gen_text = f" {args.generation}" if args.generation else ""
    docs = {k: len(set(v.groups)) for k, v in sets.items()}
    lines = [
        f"model: {lm.name or lm.source} ({len(lm.moe_layers)} MoE layers x {lm.num_experts} experts, k={lm.top_k}); "
        f"{'demo checkpoint' if real else 'TINY RANDOM MODEL (meaningless)'}",
        f"prompts: {len(sets[args.a])} {args.a} ({docs[args.a]} documents) / {len(sets[args.b])} {args.b} "
        f"({docs[args.b]} documents), {args.windows} windows of {args.prompt_tokens} tokens per held-out document; "
        f"{args.new_tokens} new tokens, greedy{gen_text}; {args.seeds} random seeds",
        f"{args.a}-linked experts by Welch t ({args.permutations} permutations):",
        "  " + ", ".join(f"L{r.layer}/E{r.expert} (d={r.effect:.1f}, p={r.p:.2g})" for r in head.itertuples()),
        f"{args.a}-linked experts by risk difference (SteerMoE):",
        "  " + ", ".join(f"L{r.layer}/E{r.expert} ({r.risk_diff:+.3f})" for r in by_rd.itertuples()),
        f"{args.b}-linked experts switched on by the steermoe preset: "
        + ", ".join(f"L{layer}/E{e}" for layer, e in on),
        _agreement(contrast, tops[0]),
        "",
    ]
    main_exp, block = _experiment(lm, sets, contrast, behaviour, quality, args, tops[0], "next_best",
                                  steering.CONDITIONS)
    lines += block
    _, block = _experiment(lm, sets, contrast, behaviour, quality, args, tops[0], "next_best", ("baseline", "top_on"),
                           on_mechanism="force")
    lines += block
    steer_exp, block = _experiment(lm, sets, contrast, behaviour, quality, args, tops[0], "next_best",
                                   None, preset="steermoe")
    lines += block
    _, block = _experiment(lm, sets, contrast, behaviour, quality, args, tops[0], "empty",
                           ("baseline", "top_off", "random_off"))
    lines += block
    for n in tops[1:]:
        for preset, conditions in (("workbench", ("baseline", "top_off", "random_off")), ("steermoe", None)):
            _, block = _experiment(lm, sets, contrast, behaviour, quality, args, n, "next_best", conditions,
                                   preset=preset)
            lines += block
    lines += ["Published: MoTE (DeepSeek-R1, refusals): top-10 of 14,848 experts off -52%, 10 random off about -9%.",
              "SteerMoE (6 LLMs, 11 benchmarks; README of adobe-research/SteerMoE): safety up to +20%, "
              "faithfulness up to +27%, unsafe steering -41% (abstract; no random-expert control quoted there).",
              f"wall time {time.time() - start:.0f} s on 1 CPU thread"]
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        main_exp.save(out / "workbench")
        steer_exp.save(out / "steermoe")
        contrast.save(out / "experts.csv")
        contrast.plot().write_html(out / "contrast.html")
        main_exp.plot().write_html(out / "experiment_workbench.html")
        steer_exp.plot().write_html(out / "experiment_steermoe.html")
        print(f"wrote {out}")
    if args.write:
        command = "python benchmarks/steering_experiment.py " + " ".join(sys.argv[1:])
        write_section("expert steering", command.replace(" --write", "").strip(), lines)
        print("updated benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
