"""Training pieces of the demo: per-layer balance loss, LR schedule, a tiny end-to-end run."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func  # noqa: E402

from workbench.demo.corpus import build_corpus  # noqa: E402
from workbench.demo.model import layer_balance, per_layer_balance_loss  # noqa: E402
from workbench.demo.train import lr_at, main as train_main  # noqa: E402


def _one_hot_logits(experts_per_token: list[int], n_experts: int) -> torch.Tensor:
    logits = torch.full((len(experts_per_token), n_experts), -10.0)
    logits[torch.arange(len(experts_per_token)), torch.tensor(experts_per_token)] = 10.0
    return logits


def test_per_layer_loss_sees_an_expert_dead_inside_one_layer():
    # layer 0 uses experts 0 and 1 only, layer 1 experts 2 and 3 only: balanced when pooled
    layer0 = _one_hot_logits([0, 1] * 32, 4)
    layer1 = _one_hot_logits([2, 3] * 32, 4)
    pooled = load_balancing_loss_func((layer0, layer1), num_experts=4, top_k=1)
    ours, shares = per_layer_balance_loss((layer0, layer1), top_k=1)
    assert abs(float(pooled) - 1.0) < 0.05       # transformers' pooled loss reads balanced
    assert float(ours) > 1.8                      # ours sees half the experts dead per layer
    assert shares[0, 2:].sum() == 0 and shares[1, :2].sum() == 0
    balanced, _ = per_layer_balance_loss((_one_hot_logits([0, 1, 2, 3] * 16, 4),) * 2, top_k=1)
    assert abs(float(balanced) - 1.0) < 0.05


def test_layer_balance_gradient_pushes_away_from_crowded_expert():
    logits = torch.randn(64, 4)
    logits[:, 0] += 3.0
    logits.requires_grad_(True)
    loss, share = layer_balance(logits, top_k=2)
    loss.backward()
    assert share[0] > 0.45 and logits.grad[:, 0].mean() > 0  # descent lowers expert 0's logit


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_at(p / 100, 1e-3, 0.1) for p in range(101)]
    peak = lrs.index(max(lrs))
    assert peak == 10 and all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:])) and abs(lrs[-1] - 1e-4) < 1e-12


def test_tiny_run_learns_and_writes_loadable_bf16_checkpoint(tmp_path):
    corpus = tmp_path / "corpus"
    build_corpus(corpus, seed=0, mb_per_domain=0.05, domains=("arithmetic", "data"))
    from workbench.demo.tokenizer import train_tokenizer

    train_tokenizer(corpus, tmp_path / "tok", vocab_size=400)
    arch = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 32, "num_experts": 4,
            "moe_intermediate_size": 32}
    out = tmp_path / "ckpt"
    train_main(["--out", str(out), "--minutes", "10", "--max-steps", "30", "--corpus", str(corpus),
                "--tokenizer", str(tmp_path / "tok"), "--arch", json.dumps(arch),
                "--seq-len", "64", "--eval-minutes", "100", "--eval-windows", "2",
                "--log-every", "10", "--lr", "3e-3", "--warmup", "0.1"])
    log = json.loads((out / "training_log.json").read_text())
    assert log["steps"] == 30 and log["tokens"] == 30 * 8 * 64
    assert log["evals"][0]["step"] == 0 and len(log["final_min_share_per_layer"]) == 2
    first, last = log["evals"][0]["loss"], log["evals"][-1]["loss"]
    assert last["arithmetic"] < first["arithmetic"] - 0.5
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    cfg = model.config
    assert cfg.model_type == "qwen3_moe" and cfg.output_router_logits is False
    assert cfg.mlp_only_layers == [] and cfg.decoder_sparse_step == 1 and cfg.num_experts == 4
    assert cfg.router_aux_loss_coef == 0.05
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
