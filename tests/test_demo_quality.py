"""The demo model behaves like a trained MoE: beats unigram, specialises, adds, keeps experts alive.

Everything is measured here on a small sample of the shipped held-out data.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from workbench.demo import checkpoint_available, load_demo  # noqa: E402
from workbench.demo.heldout import load_arith_heldout, load_heldout, load_unigram_counts  # noqa: E402
from workbench.demo.metrics import (arithmetic_accuracy, profile_documents, slot_shares,  # noqa: E402
                                    unigram_losses)
from workbench.demo.synthetic import heldout_problems  # noqa: E402

pytestmark = pytest.mark.skipif(not checkpoint_available(), reason="demo checkpoint not built")
DOCS_PER_DOMAIN = 6
MAX_TOKENS = 256


@pytest.fixture(scope="module")
def demo():
    return load_demo()


@pytest.fixture(scope="module")
def sample():
    rows, seen = [], {}
    for row in load_heldout():
        if seen.get(row["label"], 0) < DOCS_PER_DOMAIN:
            rows.append(row)
            seen[row["label"]] = seen.get(row["label"], 0) + 1
    return rows


@pytest.fixture(scope="module")
def profile(demo, sample):
    model, tok = demo
    return profile_documents(model, tok, sample, max_tokens=MAX_TOKENS)


def test_every_domain_is_present(profile):
    assert set(profile) >= {"code", "english", "german", "french", "spanish", "italian",
                            "dialog", "arithmetic", "data"}


def test_heldout_loss_clearly_below_unigram(demo, sample, profile):
    _, tok = demo
    unigram = unigram_losses(load_unigram_counts(), tok, sample, max_tokens=MAX_TOKENS)
    for domain, p in profile.items():
        assert p["loss"] < unigram[domain] - 0.5, (domain, p["loss"], unigram[domain])
        assert p["loss"] < 0.85 * unigram[domain], (domain, p["loss"], unigram[domain])


def test_each_domain_has_a_specialist_expert(demo, profile):
    model, _ = demo
    uniform = model.config.num_experts_per_tok / model.config.num_experts
    for domain, p in profile.items():
        assert p["shares"].max() >= 2 * uniform, (domain, p["shares"].max())


def test_no_expert_is_dead_in_any_layer(demo, profile):
    model, _ = demo
    shares = slot_shares(profile)  # (layers, E), each layer's routing slots, rows sum to 1
    assert shares.shape == (model.config.num_hidden_layers, model.config.num_experts)
    assert shares.min() > 0.01, shares.min(axis=1)  # uniform is 1/E = 0.0625


def test_arithmetic_well_above_chance(demo):
    model, tok = demo
    problems = load_arith_heldout()
    assert {(int(p["prompt"].split()[0]), int(p["prompt"].split()[2])) for p in problems} <= set(
        heldout_problems())
    acc, preds = arithmetic_accuracy(model, tok, problems)
    # chance: the most frequent two-digit sum (109) is 1.1% of problems
    assert len(problems) >= 200 and acc > 0.08, (acc, preds[:10])  # ~7x chance
    assert all(p.isdigit() for p in preds[:20]), preds[:20]  # the answer format is learnt
