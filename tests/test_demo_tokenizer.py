"""The shipped demo tokenizer: loads offline, digits one by one, lossless round trip."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoTokenizer  # noqa: E402

from workbench.demo import CHECKPOINT_DIR  # noqa: E402
from workbench.demo.tokenizer import build_bpe  # noqa: E402


def test_shipped_tokenizer_loads_offline_with_special_tokens():
    tok = AutoTokenizer.from_pretrained(CHECKPOINT_DIR)
    assert 4000 <= len(tok) <= 8192
    assert {tok.bos_token, tok.eos_token, tok.pad_token} == {"<|bos|>", "<|eos|>", "<|pad|>"}
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3


def test_digits_are_single_tokens_and_text_round_trips():
    tok = AutoTokenizer.from_pretrained(CHECKPOINT_DIR)
    pieces = tok.convert_ids_to_tokens(tok("x = 12345 + 678", add_special_tokens=False)["input_ids"])
    assert [p for p in pieces if any(ch.isdigit() for ch in p)] == list("12345678")
    for text in ["def f(x):\n    return x ** 2\n", "Größe: ½ — café", '{"a": [1, 2]}']:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text


def test_bpe_trainer_keeps_digits_apart():
    tok = build_bpe(["2024 was 1999 + 25 years"] * 50, vocab_size=300)
    assert tok.encode("2024").tokens == ["2", "0", "2", "4"]
