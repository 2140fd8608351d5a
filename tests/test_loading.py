"""Loading checkpoints from folders (safetensors only), with clear errors for bad input."""

import json

import pytest
import torch

import workbench as wb
from workbench.testing import tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, tok = tiny_model("qwen2_moe")
    path = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model


def test_load_folder_gives_same_model(saved):
    path, model = saved
    lm = wb.load(path)
    assert lm.adapter.name == "qwen2_moe" and lm.num_experts == 8 and lm.top_k == 2
    assert lm.fingerprint == wb.wrap(model).fingerprint
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(lm.model(ids).logits, model(ids).logits)
    assert lm.source == str(path)


def test_load_refuses_folder_without_safetensors(tmp_path, saved):
    path, _ = saved
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="safetensors"):
        wb.load(tmp_path)


def test_load_refuses_dense_checkpoint(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path)
    with pytest.raises(wb.UnsupportedModelError, match="'llama'.*Supported model types"):
        wb.load(tmp_path)


def test_remote_code_is_off_by_default(tmp_path, saved):
    path, _ = saved
    for f in path.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    lm = wb.load(tmp_path)  # the auto_map is ignored without trust_remote_code
    assert lm.adapter.name == "qwen2_moe"
