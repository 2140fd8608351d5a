"""Train the demo MoE on the demo corpus within a wall-clock budget, on one CPU thread.

``python -m workbench.demo.train --out DIR --minutes M --seed 0`` builds the corpus and tokenizer
first when ``--corpus`` / ``--tokenizer`` (defaults under ``workbench/demo/_work``) are missing,
then trains a ``Qwen3MoeForCausalLM`` with AdamW, linear warmup and a cosine decay laid over the
time budget, single-domain packed sequences, a per-layer Switch balance loss, held-out evaluation
every few minutes, and writes a loadable bf16 checkpoint to ``DIR`` every ``--save-minutes``.
``--init CKPT`` continues from a checkpoint (fresh optimizer and schedule) and ``--weights``
changes the domain mixture, e.g. for a second phase with more arithmetic. ``DIR`` ends up
with ``config.json``, ``model.safetensors``, the tokenizer files and ``training_log.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from workbench.demo.model import make_config, per_layer_balance_loss
from workbench.demo.packing import DOMAIN_WEIGHTS, PackedSampler, domain_streams, eval_windows


def lr_at(progress: float, peak: float, warmup: float, floor: float = 0.1) -> float:
    """Learning rate at ``progress`` in [0, 1] of the budget: linear warmup, cosine to ``floor``.

    Example:
        >>> lr_at(0.0, 1e-3, 0.05), lr_at(1.0, 1e-3, 0.05)
        (0.0, 0.0001)
    """
    if progress < warmup:
        return peak * progress / warmup
    t = min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def lm_loss(model, tokens: torch.Tensor, router_logits: bool = False):
    """Mean next-token cross-entropy of ``tokens`` ``(B, T+1)`` and, optionally, router logits."""
    out = model(input_ids=tokens[:, :-1], output_router_logits=router_logits, use_cache=False)
    loss = F.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]),
                           tokens[:, 1:].reshape(-1))
    return loss, (out.router_logits if router_logits else None)


@torch.no_grad()
def evaluate(model, windows: dict[str, torch.Tensor], batch: int = 8) -> dict[str, float]:
    """Mean held-out loss (nats/token) per domain over fixed windows.

    Example:
        >>> from workbench.demo import load_demo
        >>> model, tok = load_demo()
        >>> w = {"arithmetic": torch.tensor([tok("12 + 30 = 42\\n7 + 5 = 12")["input_ids"]])}
        >>> evaluate(model, w)["arithmetic"] < 5.0
        True
    """
    model.eval()
    result = {}
    for domain, win in windows.items():
        losses = [lm_loss(model, win[i:i + batch])[0].item() * len(win[i:i + batch])
                  for i in range(0, len(win), batch)]
        result[domain] = sum(losses) / len(win)
    model.train()
    return result


def _summary(log: dict) -> dict:
    """The figures of one training phase that later phases carry in their log."""
    return {"args": log["args"], "steps": log["steps"], "tokens": log["tokens"],
            "seconds": log["seconds"], "domain_weights": log["domain_weights"],
            "final_eval": log["evals"][-1] if log["evals"] else None}


def save_checkpoint(model, tokenizer, out: Path, log: dict) -> None:
    """Write a bf16 copy of ``model`` (router logits off), the tokenizer and the log to ``out``.

    The weights are stored in bf16; ``config.json`` keeps ``dtype: float32`` so that a plain
    ``from_pretrained`` upcasts them (bf16 matmuls are very slow on CPUs without native bf16).
    """
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.bfloat16) for k, v in model.state_dict().items()}
    model.config.output_router_logits = False
    model.save_pretrained(str(out), state_dict=state)
    tokenizer.save_pretrained(str(out))
    (out / "training_log.json").write_text(json.dumps(log, indent=1))


def train(args: argparse.Namespace) -> dict:
    """Run the training loop described in the module docstring; returns the training log."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(str(args.tokenizer))
    train_streams = domain_streams(args.corpus / "train.jsonl", tok)
    val_streams = domain_streams(args.corpus / "validation.jsonl", tok)
    weights = {**DOMAIN_WEIGHTS, **(json.loads(args.weights) if args.weights else {})}
    sampler = PackedSampler(train_streams, args.seq_len, args.seed, weights)
    windows = eval_windows(val_streams, args.seq_len, args.eval_windows)
    arch = json.loads(args.arch) if args.arch else {}
    config = make_config(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id,
                         router_aux_loss_coef=args.aux_coef,
                         experts_implementation=args.experts_implementation, **arch)
    prev = None
    if args.init:  # continue from a saved checkpoint (new optimizer state, new schedule)
        model = AutoModelForCausalLM.from_pretrained(str(args.init), dtype=torch.float32,
                                                     experts_implementation=args.experts_implementation)
        model.config.router_aux_loss_coef = args.aux_coef
        config = model.config
        log_path = Path(args.init) / "training_log.json"
        prev = json.loads(log_path.read_text()) if log_path.is_file() else None
    else:
        model = AutoModelForCausalLM.from_config(config)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "gate.weight" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "gate.weight" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    log = {"args": {k: str(v) for k, v in vars(args).items()}, "parameters": n_params,
           "train_tokens_per_domain": {d: int(len(s)) for d, s in train_streams.items()},
           "domain_weights": weights, "steps": 0, "tokens": 0, "seconds": 0.0,
           "evals": [], "min_share_per_layer": [],
           "previous_phases": (prev.get("previous_phases", []) + [_summary(prev)]) if prev else []}
    print(f"params {n_params / 1e6:.2f}M, budget {args.minutes} min", flush=True)
    budget = args.minutes * 60.0
    step, tokens, min_shares, window_shares = 0, 0, None, None
    res = evaluate(model, windows)
    log["evals"].append({"step": 0, "tokens": 0, "seconds": 0.0, "loss": res})
    print("eval 0", {k: round(v, 3) for k, v in res.items()}, flush=True)
    t0 = last_eval = last_save = time.time()
    max_steps = args.max_steps or float("inf")
    while (elapsed := time.time() - t0) < budget and step < max_steps:
        lr = lr_at(max(elapsed / budget, step / max_steps), args.lr, args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        batch, _ = sampler.batch(args.batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            ce, router_logits = lm_loss(model, batch, router_logits=True)
            aux, shares = per_layer_balance_loss(router_logits, config.num_experts_per_tok)
        loss = ce + args.aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step, tokens = step + 1, tokens + batch[:, :-1].numel()
        window_shares = shares if window_shares is None else window_shares + shares
        if step % args.log_every == 0:
            mean_shares = window_shares / args.log_every  # (layers, E) over the last log window
            min_shares = mean_shares.min(dim=1).values
            window_shares = None
            print(f"step {step} t {elapsed:6.0f}s tok {tokens} lr {lr:.2e} ce {ce.item():.3f} "
                  f"aux {aux.item():.3f} tok/s {tokens / max(elapsed, 1e-9):.0f} "
                  f"min-share/layer {[round(x, 3) for x in min_shares.tolist()]}", flush=True)
        now = time.time()
        if now - last_eval >= args.eval_minutes * 60:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                res = evaluate(model, windows)
            log["evals"].append({"step": step, "tokens": tokens, "seconds": now - t0, "loss": res})
            log["min_share_per_layer"].append(min_shares.tolist())
            print("eval", step, {k: round(v, 3) for k, v in res.items()}, flush=True)
            last_eval = time.time()
        if now - last_save >= args.save_minutes * 60:
            log.update(steps=step, tokens=tokens, seconds=time.time() - t0)
            save_checkpoint(model, tok, args.out, log)
            print(f"saved {args.out} at step {step}", flush=True)
            last_save = time.time()
    log.update(steps=step, tokens=tokens, seconds=time.time() - t0,
               tokens_per_second=tokens / (time.time() - t0))
    phases = log["previous_phases"] + [_summary(log)]
    log["total"] = {k: sum(p[k] for p in phases) for k in ("steps", "tokens", "seconds")}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        res = evaluate(model, windows)
    log["evals"].append({"step": step, "tokens": tokens, "seconds": log["seconds"], "loss": res})
    log["final_min_share_per_layer"] = min_shares.tolist() if min_shares is not None else None
    save_checkpoint(model, tok, args.out, log)
    print("final eval", {k: round(v, 3) for k, v in res.items()}, f"saved {args.out}", flush=True)
    return log


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see ``--help``)."""
    work = Path(__file__).resolve().parent / "_work"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory")
    p.add_argument("--minutes", type=float, required=True, help="wall-clock training budget")
    p.add_argument("--max-steps", type=int, default=0, help="also stop after this many steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", type=Path, default=work / "corpus")
    p.add_argument("--tokenizer", type=Path, default=work / "tokenizer")
    p.add_argument("--init", type=Path, default=None,
                   help="continue from this checkpoint (fresh optimizer and LR schedule)")
    p.add_argument("--weights", default="",
                   help='JSON overrides of the domain weights, e.g. \'{"arithmetic": 0.4}\'')
    p.add_argument("--arch", default="", help='JSON overrides of DEFAULT_ARCH, e.g. \'{"num_hidden_layers": 6}\'')
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=float, default=0.03, help="share of the budget")
    p.add_argument("--aux-coef", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False,
                   help="bf16 autocast (10x slower than fp32 on CPUs without native bf16)")
    p.add_argument("--experts-implementation", default="grouped_mm",
                   help="transformers experts kernel for training (grouped_mm was fastest here)")
    p.add_argument("--eval-minutes", type=float, default=5.0)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--save-minutes", type=float, default=10.0)
    p.add_argument("--log-every", type=int, default=20)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    args = parse_args(argv)
    if not (args.corpus / "train.jsonl").is_file():
        from workbench.demo.corpus import build_corpus

        build_corpus(args.corpus, seed=args.seed, mb_per_domain=2.5)
    if not (args.tokenizer / "tokenizer.json").is_file():
        from workbench.demo.tokenizer import train_tokenizer

        train_tokenizer(args.corpus, args.tokenizer)
    train(args)


if __name__ == "__main__":
    main()
