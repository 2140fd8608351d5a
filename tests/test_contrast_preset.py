"""preset="scmoe" against a small re-implementation of the reference loop (DavidFanzz/SCMoE,
decodingmethod/moe_utils.py `scmoe`): raw-logit contrast, plausibility cut, EOS banned, prompt
tokens exactly as the tokenizer makes them; and the documented default (BOS first, stop at EOS)."""

import copy
import math

import pytest
import torch

import workbench as wb
from workbench.contrast import generate, generate_greedy, generate_two_pass
from workbench.contrast.presets import banned_ids, resolve
from workbench.testing import tiny_model


@torch.inference_mode()
def reference_scmoe(lm, prompt, max_new_tokens, alpha=0.1, beta=0.5, rank=2):
    """The reference loop, written out: no cache (every step re-reads the whole sequence), strong =
    the model as it is, weak = one expert by rank with weight 1; scores on raw logits."""
    ids = list(lm.tokenizer(prompt, add_special_tokens=True)["input_ids"])
    eos = lm.tokenizer.eos_token_id if lm.tokenizer.eos_token_id is not None else lm.tokenizer.pad_token_id
    out = []
    for _ in range(max_new_tokens):
        x = torch.tensor([ids + out])
        z_s = lm.model(input_ids=x).logits[0, -1].float()
        with wb.edit(lm, wb.KeepRank(rank)):
            z_w = lm.model(input_ids=x).logits[0, -1].float()
        cutoff = math.log(alpha) + z_s.max()
        diffs = (1 + beta) * z_s - beta * z_w
        cd = diffs.masked_fill(z_s < cutoff, float("-inf"))
        cd[eos] = float("-inf")
        out.append(int(torch.argmax(cd)))
    return out


@pytest.fixture(scope="module")
def eos_lm():
    """A tiny model whose EOS is the token the strong routing picks first for PROMPT, so the
    default stops at once and the preset must avoid it."""
    model, tokenizer = tiny_model("qwen3_moe")
    lm = wb.wrap(model, copy.deepcopy(tokenizer))  # the tiny tokenizer is shared: change a copy
    first = generate_greedy(lm, PROMPT, max_new_tokens=1, bos=False).token_ids[0]
    token = lm.tokenizer.convert_ids_to_tokens(first)
    lm.tokenizer.eos_token = token
    lm.model.generation_config.eos_token_id = first
    lm.model.config.eos_token_id = first
    assert lm.tokenizer.eos_token_id == first
    return lm


PROMPT = "12 + 34 = 46. The quick"


def test_preset_equals_the_reference_loop(eos_lm):
    want = reference_scmoe(eos_lm, PROMPT, 8)
    got = generate(eos_lm, PROMPT, max_new_tokens=8, preset="scmoe")
    assert got.token_ids == want
    assert eos_lm.tokenizer.eos_token_id not in got.token_ids and got.stop_reason == "length"
    two = generate_two_pass(eos_lm, PROMPT, max_new_tokens=8, preset="scmoe")
    assert two.token_ids == want


def test_default_stops_at_eos_and_puts_bos_first(eos_lm):
    g = generate(eos_lm, PROMPT, max_new_tokens=8, bos=False, beta=0.0)
    assert g.token_ids == [eos_lm.tokenizer.eos_token_id] and g.stop_reason == "eos"
    # the preset's greedy baseline stops at EOS too (the reference's greedy is model.generate)
    assert generate_greedy(eos_lm, PROMPT, max_new_tokens=8, preset="scmoe").stop_reason == "eos"
    assert generate_greedy(eos_lm, PROMPT, max_new_tokens=4, preset="scmoe", eos="ban").stop_reason == "length"


def test_prompt_tokens_follow_the_tokenizer_under_the_preset(tiny):
    lm = tiny("qwen3_moe")
    ids = list(lm.tokenizer(PROMPT)["input_ids"])
    assert ids[0] != lm.tokenizer.bos_token_id, "this tokenizer adds no BOS itself"
    from workbench.contrast.decode import encode_prompt

    assert encode_prompt(lm, PROMPT, resolve("scmoe")[0] == "prepend")[0].tolist() == ids
    assert encode_prompt(lm, PROMPT, resolve(None)[0] == "prepend")[0].tolist() == [lm.tokenizer.bos_token_id] + ids
    # the preset changes what the model reads, so its first strong candidates follow the reference
    strong = lm.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    g = generate(lm, PROMPT, max_new_tokens=1, preset="scmoe", beta=0.0)
    assert g.token_ids[0] == int(strong.argmax())


def test_ban_falls_back_to_the_pad_token_and_errors_name_the_choices(tiny):
    lm = tiny("mixtral")
    assert banned_ids(lm) == [lm.tokenizer.eos_token_id]
    with pytest.raises(ValueError, match="scmoe"):
        generate(lm, PROMPT, max_new_tokens=2, preset="paper")
    with pytest.raises(ValueError, match="'stop'"):
        generate(lm, PROMPT, max_new_tokens=2, eos="never")
