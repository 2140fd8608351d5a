"""Measure the demo checkpoint and write its model card (``checkpoint/README.md``).

``python -m workbench.demo.card`` loads :data:`~workbench.demo.CHECKPOINT_DIR`, measures it on
the shipped held-out data (:mod:`workbench.demo.heldout`) and writes ``README.md`` and
``metrics.json`` beside the weights. Every figure in the card comes from this run or from
``training_log.json`` written by :mod:`workbench.demo.train`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from workbench.demo import CHECKPOINT_DIR, DATA_DIR, load_demo
from workbench.demo.heldout import load_arith_heldout, load_heldout, load_unigram_counts
from workbench.demo.metrics import (arithmetic_accuracy, forward_latency, greedy_continuation,
                                    profile_documents, slot_shares, top_experts,
                                    unigram_losses)
from workbench.demo.sources import SOURCES

CARD_LAYERS = (0, 1, 2, 3)
PROMPT_TOKENS = 12


def _latency_by_threads(model) -> dict[str, float]:
    """Median 512-token forward seconds with 1 thread and with all of torch's threads."""
    default = torch.get_num_threads()
    out = {}
    for n in sorted({1, default}):
        torch.set_num_threads(n)
        out[str(n)] = forward_latency(model, 512)
    torch.set_num_threads(default)
    return out


def measure(path: Path | str = CHECKPOINT_DIR, data_dir: Path | str = DATA_DIR) -> dict:
    """All figures of the card as a JSON-able dict (takes about a minute on a laptop CPU)."""
    model, tok = load_demo(path)
    rows = load_heldout(data_dir)
    prof = profile_documents(model, tok, rows)
    uni = unigram_losses(load_unigram_counts(data_dir), tok, rows)
    acc, preds = arithmetic_accuracy(model, tok, load_arith_heldout(data_dir))
    cfg = model.config
    uniform = cfg.num_experts_per_tok / cfg.num_experts
    routing = {}
    for domain, p in prof.items():
        routing[domain] = {str(layer): top_experts(p["shares"][layer], 3)
                           for layer in range(cfg.num_hidden_layers)}
    generations = {}
    for domain in prof:
        prompts = []
        for text in (r["text"] for r in rows if r["label"] == domain):
            prompt = tok.decode(tok(text, add_special_tokens=False)["input_ids"][:PROMPT_TOKENS])
            if prompt not in prompts and len(prompts) < 3:
                prompts.append(prompt)
        if domain == "arithmetic":
            prompts = [p["prompt"] for p in load_arith_heldout(data_dir)[:3]]
        generations[domain] = [(p, greedy_continuation(model, tok, p, 40)) for p in prompts]
    log_path = Path(path) / "training_log.json"
    size = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
    return {
        "config": {k: getattr(cfg, k) for k in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "num_experts", "num_experts_per_tok",
            "moe_intermediate_size", "norm_topk_prob", "router_aux_loss_coef",
            "tie_word_embeddings")},
        "parameters": sum(p.numel() for p in model.parameters()),
        "checkpoint_bytes": size,
        "training": json.loads(log_path.read_text()) if log_path.is_file() else None,
        "heldout": {d: {"loss": p["loss"], "unigram": uni[d], "tokens": p["tokens"]}
                    for d, p in prof.items()},
        "uniform_share": uniform,
        "routing_top": routing,
        "slot_share_min_per_layer": slot_shares(prof).min(axis=1).tolist(),
        "slot_share_max_per_layer": slot_shares(prof).max(axis=1).tolist(),
        "max_share_ratio": {d: float(p["shares"].max() / uniform) for d, p in prof.items()},
        "arithmetic": {"accuracy": acc, "n": len(preds), "examples": preds[:10]},
        "generations": generations,
        "latency_512_s": _latency_by_threads(model),
    }


def _command(args: dict) -> str:
    """The ``workbench.demo.train`` command line of a phase, from its logged arguments."""
    work = str(Path(__file__).resolve().parent / "_work")
    rel = {k: str(v).replace(work, "workbench/demo/_work") for k, v in args.items()}
    cmd = f"python -m workbench.demo.train --out {rel['out']} --minutes {rel['minutes']} --seed {rel['seed']}"
    if rel.get("init", "None") != "None":
        cmd += f" --init {rel['init']}"
    if rel.get("weights"):
        cmd += f" --weights '{rel['weights']}'"
    if rel.get("lr") and float(rel["lr"]) != 1.5e-3:
        cmd += f" --lr {rel['lr']}"
    return cmd


def _rebuild_training(phases: list[dict]) -> list[str]:
    lines = []
    for i, ph in enumerate(phases):
        init = ph["args"].get("init", "None")
        if i and init != "None" and init != phases[i - 1]["args"]["out"]:
            lines.append(f"cp -r {_command(phases[i - 1]['args']).split()[4]} "
                         + _command(ph["args"]).split("--init ")[1].split()[0])
        lines.append(_command(ph["args"]))
    return lines


def _fmt_routing(m: dict, layers) -> list[str]:
    u = m["uniform_share"]
    head = "| domain | " + " | ".join(f"layer {layer}: top experts (share)" for layer in layers) + " |"
    lines = [head, "|" + "---|" * (len(layers) + 1)]
    for d, per_layer in m["routing_top"].items():
        cells = [", ".join(f"e{e} {s:.2f} ({s / u:.1f}x)" for e, s in per_layer[str(layer)])
                 for layer in layers]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return lines


def render_card(m: dict) -> str:
    """The model card markdown from the dict of :func:`measure`."""
    c, t = m["config"], m["training"] or {}
    args = t.get("args", {})
    phases = t.get("previous_phases", []) + ([{k: t[k] for k in (
        "args", "steps", "tokens", "seconds", "domain_weights")}] if t else [])
    total = {k: sum(p[k] for p in phases) for k in ("steps", "tokens", "seconds")}
    lines = [
        "---", "license: other", "library_name: transformers", "pipeline_tag: text-generation",
        "tags: [moe, qwen3_moe, demo, interpretability]", "---", "",
        "# moe-workbench demo MoE", "",
        "A small Mixture-of-Experts language model trained from scratch on CPU so that the workbench",
        "has a real MoE to inspect offline: experts specialise by domain and language and the",
        "model does two-digit addition. It is a plain `Qwen3MoeForCausalLM` (`model_type: qwen3_moe`):",
        "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "from workbench.demo import CHECKPOINT_DIR",
        "model = AutoModelForCausalLM.from_pretrained(CHECKPOINT_DIR)",
        "tok = AutoTokenizer.from_pretrained(CHECKPOINT_DIR)", "```", "",
        "Documents were trained as `<|bos|> text <|eos|>`; prepend `<|bos|>` when prompting",
        "(the tokenizer does not add it).", "",
        "## Architecture", "",
        f"{c['num_hidden_layers']} layers, hidden {c['hidden_size']}, {c['num_attention_heads']} "
        f"attention heads ({c['num_key_value_heads']} KV heads, head dim {c['head_dim']}), every "
        f"layer a sparse MoE block with {c['num_experts']} experts of width "
        f"{c['moe_intermediate_size']}, top-{c['num_experts_per_tok']} softmax routing with "
        f"renormalised top-k weights (`norm_topk_prob={c['norm_topk_prob']}`), no shared expert, "
        f"tied embeddings, vocabulary {c['vocab_size']} (byte-level BPE, digits split one by one). "
        f"{m['parameters'] / 1e6:.2f}M parameters; `model.safetensors` is bf16, "
        f"{m['checkpoint_bytes'] / 1e6:.1f} MB. Forward pass over 512 tokens (fp32, batch 1, "
        "median of 5, measured while other jobs shared the CPU): "
        + ", ".join(f"{v * 1000:.0f} ms with {k} thread(s)" for k, v in m["latency_512_s"].items())
        + ".", "",
        "## Training", "",
        "On one CPU thread (`torch.set_num_threads(1)`; the machine was shared with other jobs), "
        f"fp32 (bf16 autocast was ~10x slower on this CPU), experts implementation "
        f"`{args.get('experts_implementation', '?')}`: AdamW (betas 0.9/0.95, weight decay 0.1 on "
        "matrices except the router), linear warmup then cosine decay to 10% of the peak laid "
        "over the wall-clock budget, gradient clipping 1.0, batches of "
        f"{args.get('batch', '?')} sequences of {args.get('seq_len', '?')} tokens, each sequence a "
        "window of ONE domain's packed token stream (`<|bos|> doc <|eos|> <|bos|> doc ...`), the "
        "domain drawn with the weights below. Load balancing: a Switch-style loss computed per "
        "layer and averaged over layers, coefficient "
        f"{c['router_aux_loss_coef']} (transformers' built-in loss sums counts over layers and "
        "can miss an expert dying inside one layer). A second phase continued from the first "
        "phase's checkpoint with a larger arithmetic share, because the units digit of the sums "
        "was still unlearnt (fresh optimizer state and schedule).", "",
        "| phase | command | steps | tokens | minutes | tokens/s | domain weights |",
        "|---|---|---|---|---|---|---|",
        *[f"| {i + 1} | `{_command(ph['args'])}` | {ph['steps']} | {ph['tokens'] / 1e6:.2f}M | "
          f"{ph['seconds'] / 60:.1f} | {ph['tokens'] / max(ph['seconds'], 1):.0f} | "
          + ", ".join(f"{d} {w}" for d, w in ph["domain_weights"].items()) + " |"
          for i, ph in enumerate(phases)],
        "", f"In total {total['steps']} steps, {total['tokens'] / 1e6:.2f}M tokens, "
        f"{total['seconds'] / 60:.1f} minutes of training "
        f"({total['tokens'] / max(total['seconds'], 1):.0f} tokens/s). Weights are normalised to "
        "sum to 1 when sampling. A phase whose minutes are below its `--minutes` was stopped by "
        "hand and continues from its last periodic checkpoint (the LR schedule follows the "
        "wall clock, so a rerun on another machine reaches a similar, not identical, model).",
        "", "Smallest expert share per layer over the final log window (uniform "
        f"{m['uniform_share'] / c['num_experts_per_tok']:.4f} of slots): "
        f"{[round(x, 4) for x in (t.get('final_min_share_per_layer') or [])]}.", "",
        "Expert load on the held-out documents, share of each layer's routing slots (uniform "
        f"{1 / c['num_experts']:.4f}): smallest per layer "
        f"{[round(x, 4) for x in m['slot_share_min_per_layer']]}, largest per layer "
        f"{[round(x, 4) for x in m['slot_share_max_per_layer']]}.", "",
        "## Corpus and licences", "",
        "Built by `python -m workbench.demo.corpus --out workbench/demo/_work/corpus --seed 0 "
        "--mb-per-domain 2.5`: up to 2.5M characters per domain, round-robin over each domain's "
        "sources, 5% of each domain's documents held out for validation. The held-out data in "
        "`workbench/demo/data/` comes only from the validation split; the arithmetic test problems "
        "are never in any corpus document.", "",
        "| source | domain | package | licence | provenance |", "|---|---|---|---|---|",
        *[f"| {s.name} | {s.domain} | {s.package} | {s.licence} | {s.provenance} |"
          for s in SOURCES.values()], "",
        "The Bible text (`bible-kjv-text`) is not used: its data file is in a custom compressed",
        "format that needs the `bible` program.", "",
        "## Held-out loss (nats/token)", "",
        "On `data/heldout.jsonl` (documents cut to 512 tokens), against a unigram model of the",
        "same domain fitted on the training split (add-one smoothing).", "",
        "| domain | tokens | model | unigram | model ppl |", "|---|---|---|---|---|",
        *[f"| {d} | {h['tokens']} | {h['loss']:.3f} | {h['unigram']:.3f} | {np.exp(h['loss']):.1f} |"
          for d, h in m["heldout"].items()], "",
        "## Routing specialisation", "",
        f"Share of a domain's tokens routed to an expert (top-{c['num_experts_per_tok']}), "
        f"uniform = k/E = {m['uniform_share']:.3f}; in brackets the ratio to uniform. Measured "
        "with forward hooks on `model.model.layers[i].mlp.gate`.", "",
        *_fmt_routing(m, [layer for layer in CARD_LAYERS if layer < c["num_hidden_layers"]]), "",
        "Largest share / uniform per domain (any layer): "
        + ", ".join(f"{d} {r:.1f}x" for d, r in m["max_share_ratio"].items()) + ".", "",
        "## Arithmetic", "",
        f"Greedy exact match on {m['arithmetic']['n']} held-out two-digit sums "
        f"(`data/arith_heldout.jsonl`): **{m['arithmetic']['accuracy'] * 100:.1f}%**. "
        "The most frequent sum covers 1.1% of two-digit problems (chance level).", "",
        "## Greedy generations", "",
    ]
    for d, gens in m["generations"].items():
        lines.append(f"**{d}**")
        lines.append("")
        for prompt, out in gens:
            lines.append("```text")
            lines.append(f"{prompt}⟪{out}⟫")
            lines.append("```")
        lines.append("")
    lines += ["Prompts are the first tokens of held-out documents; the continuation is between ⟪ ⟫.",
              "", "## Rebuild", "", "```bash",
              "python -m workbench.demo.corpus --out workbench/demo/_work/corpus --seed 0 --mb-per-domain 2.5",
              "python -m workbench.demo.tokenizer --corpus workbench/demo/_work/corpus --out workbench/demo/_work/tokenizer",
              *_rebuild_training(phases),
              "python -m workbench.demo.export --src workbench/demo/_work/run1/checkpoint",
              "python -m workbench.demo.heldout --corpus workbench/demo/_work/corpus",
              "python -m workbench.demo.card", "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m workbench.demo.card [--checkpoint DIR]``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT_DIR)
    p.add_argument("--data", type=Path, default=DATA_DIR)
    args = p.parse_args(argv)
    m = measure(args.checkpoint, args.data)
    (args.checkpoint / "metrics.json").write_text(json.dumps(m, indent=1, ensure_ascii=False))
    (args.checkpoint / "README.md").write_text(render_card(m))
    print(f"wrote {args.checkpoint / 'README.md'}")


if __name__ == "__main__":
    main()
