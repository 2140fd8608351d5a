"""Pruned models: sliced weights, checkpoints that plain transformers loads, same logits three ways."""

from __future__ import annotations

import json

import pytest
import torch
from test_pruning import TEXTS, grouped

import workbench as wb
from workbench.pruning import Pruner, PruningConstraintError, UnsupportedPruning, prune_model, save_pruned
from workbench.pruning.slicing import PRUNING_KEY

IDS = torch.tensor([[1, 17, 45, 99, 120, 7, 256, 31, 64, 300], [1, 5, 9, 200, 201, 202, 11, 12, 13, 14]])


def _kept(lm, per_group=None):
    e = lm.num_experts
    if per_group:  # balanced over groups of e // n experts: keep the first per_group of each group
        size = e // per_group[0]
        return {layer: [g * size + i for g in range(per_group[0]) for i in range(per_group[1])]
                for layer in lm.moe_layers}
    return {layer: [x for x in range(e) if (x + layer) % 4 != 0] for layer in lm.moe_layers}


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", ["qwen3_moe", "olmoe", "mixtral", "gpt_oss", "qwen2_moe", "granitemoe",
                                    "deepseek_v3", "glm4_moe", "deepseek_v2_free"])
def test_pruned_checkpoint_reloads_in_plain_transformers_with_the_same_logits(tiny, family, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if family == "deepseek_v3":
        lm, kept = grouped(n_group=2, topk_group=1), None
        kept = _kept(lm, per_group=(2, 3))
    elif family == "deepseek_v2_free":
        lm = grouped("deepseek_v2", n_group=4, topk_group=4)
        kept = _kept(lm)
    else:
        lm = tiny(family)
        kept = _kept(lm, per_group=(2, 3)) if family == "glm4_moe" else _kept(lm)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    fingerprint = lm.fingerprint
    small = prune_model(lm, kept)
    keep = len(next(iter(kept.values())))
    assert small.num_experts == keep and lm.num_experts == 8
    layer = lm.moe_layers[0]
    assert small.router(layer).weight.shape[0] == keep
    assert torch.equal(small.router(layer).weight, lm.router(layer).weight[kept[layer]])
    assert torch.equal(small.experts(layer).down_proj, lm.experts(layer).down_proj[kept[layer]])
    if lm.selection_bias(layer) is not None:
        assert torch.equal(small.selection_bias(layer), lm.selection_bias(layer)[kept[layer]])
    folder = save_pruned(small, tmp_path / "pruned")
    plain = AutoModelForCausalLM.from_pretrained(folder)
    plain.eval()
    dropped = {layer: [e for e in range(8) if e not in k] for layer, k in kept.items()}
    with wb.edit(lm, wb.Mask(dropped)):
        masked = _logits(lm.model)
    assert torch.allclose(_logits(plain), _logits(small.model), atol=1e-6)
    assert torch.allclose(_logits(small.model), masked, atol=1e-5)
    assert not torch.allclose(_logits(lm.model), masked, atol=1e-3)
    config = json.loads((folder / "config.json").read_text())
    assert config[PRUNING_KEY]["kept"] == {str(k): v for k, v in kept.items()}
    assert AutoTokenizer.from_pretrained(folder)("hello").input_ids == lm.tokenizer("hello").input_ids
    assert lm.fingerprint == fingerprint  # the original model is untouched
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    assert wb.load(folder).num_experts == keep


def test_result_save_checkpoint_and_the_demo_shapes(tiny, tmp_path, capsys):
    lm = tiny("qwen3_moe")
    res = Pruner(lm, TEXTS, progress=False).prune(keep=5)
    out = res.save_checkpoint(lm, tmp_path / "ckpt")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "pruning.csv", "pruning.json"):
        assert (out / name).is_file(), name
    bar = capsys.readouterr().err  # writing a large checkpoint takes minutes: the steps show
    assert "saving ckpt" in bar and "2/2" in bar, bar
    save_pruned(res.apply(lm), tmp_path / "quiet", progress=False)
    assert "saving" not in capsys.readouterr().err
    reloaded = wb.load(out)
    assert reloaded.num_experts == 5 and reloaded.saved_skip is None
    with wb.edit(lm, res.mask()):
        masked = _logits(lm.model)
    assert torch.allclose(_logits(reloaded.model), masked, atol=1e-5)


def test_refusals_are_clear(tiny):
    with pytest.raises(UnsupportedPruning, match="dbrx.*result.mask"):
        prune_model(tiny("dbrx"), {0: [0, 1], 1: [0, 1]})
    lm = tiny("mixtral")
    with pytest.raises(ValueError, match="every MoE layer"):
        prune_model(lm, {0: [0, 1, 2]})
    with pytest.raises(ValueError, match="same number"):
        prune_model(lm, {0: [0, 1, 2], 1: [0, 1]})
    with pytest.raises(PruningConstraintError, match="between k=2"):
        prune_model(lm, {0: [0], 1: [1]})
    glm = tiny("glm4_moe")
    with pytest.raises(ValueError, match="kept per group"):
        prune_model(glm, {layer: [0, 1, 2, 3] for layer in glm.moe_layers})
    other = tiny("olmoe")
    res = Pruner(lm, TEXTS, progress=False).prune(keep=6, method="frequency")
    with pytest.raises(ValueError, match="computed on model"):
        res.apply(other)


def test_cli_prune_and_skip(tiny, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from workbench.cli import main

    src = tmp_path / "src"
    lm = tiny("olmoe")
    lm.model.save_pretrained(src)
    lm.tokenizer.save_pretrained(src)
    texts = tmp_path / "cal.txt"
    texts.write_text("\n".join(TEXTS))
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(src), "--keep", "6", "--method", "enumerate", "--out", str(out),
                 "--texts", str(texts), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "pruning.csv" in printed and "enumerate" in printed
    rows = (out / "pruning.csv").read_text().splitlines()
    assert len(rows) == 1 + len(lm.moe_layers)
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert plain.config.num_experts == 6
    assert main(["skip", "--model", str(out), "--out", str(tmp_path / "skip"), "--texts", str(texts), "--quiet"]) == 0
    skipped = wb.load(tmp_path / "skip")
    assert skipped.saved_skip is not None and skipped.num_experts == 6
    assert main(["prune", "--model", str(src), "--keep", "1", "--out", str(tmp_path / "x"), "--texts", str(texts),
                 "--quiet"]) == 2
    assert "valid choices" in capsys.readouterr().err
