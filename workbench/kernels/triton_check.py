"""Self-check of the Triton kernels against the references: ``python -m workbench.kernels.triton_check``.

On a CUDA machine it checks the compiled kernels (float32, float16, bfloat16). On CPU run it with
``TRITON_INTERPRET=1`` (set before Python starts, so that kernels are defined interpreted): tiny
shapes, float32 and float16 (the interpreter has no bfloat16). The tests run it that way in a
subprocess. Prints one line per case and ``triton check: N passed, M failed``; exits 1 on failure.

Cases: routing under every family rule and every plan kind (many plans per launch); grouped replay
across ``E``, ``k``, dtypes, weight layouts (concatenated, interleaved, transposed, separate), biases,
activations, input scaling, empty slots, zero weights, unused experts and all tokens to one expert;
and the invariant on tiny models: replaying the model's own routing reproduces the cached output.

Example:
    >>> from workbench.kernels.triton_check import RULES
    >>> len(RULES), RULES["sparsemixer"].describe()
    (9, 'sparsemixer')
"""

from __future__ import annotations

import argparse
import sys
import warnings

import torch

from workbench.kernels.grouped import ExpertWeights, grouped_experts
from workbench.kernels.plans import route_plans
from workbench.kernels.routing import RoutingPlan
from workbench.kernels.rules import RoutingRule

RULES = {
    "softmax_renorm": RoutingRule("softmax", renormalize=True),
    "softmax_plain": RoutingRule("softmax"),
    "softmax_groups": RoutingRule("softmax", n_group=4, topk_group=2, scaling=1.5),
    "softmax_pnorm": RoutingRule("softmax", renormalize=True, renorm_p=2.0),
    "sigmoid_groups": RoutingRule("sigmoid", renormalize=True, renorm_eps=1e-20, scaling=2.5, n_group=4,
                                  topk_group=2, group_score="top2sum"),
    "sigmoid": RoutingRule("sigmoid", renormalize=True),
    "topk_softmax": RoutingRule("topk_softmax"),
    "topk_sigmoid": RoutingRule("topk_sigmoid"),
    "sparsemixer": RoutingRule("sparsemixer"),
}

PLANS = [RoutingPlan(k=2), RoutingPlan(k=3), RoutingPlan(k=1), RoutingPlan(k=2, blocked=frozenset({0, 5})),
         RoutingPlan(k=3, emptied=frozenset({1, 2, 3})), RoutingPlan(k=2, mode="top_p", top_p=0.6),
         RoutingPlan(k=2, mode="rank", rank=2), RoutingPlan(k=2, mode="rank", rank=0, blocked=frozenset({3})),
         RoutingPlan(k=3, forced=((7, None), (2, 0.3))), RoutingPlan(k=4, skip_beta=0.5),
         RoutingPlan(k=3, blocked=frozenset({4}), emptied=frozenset({1}), skip_beta=0.3)]


def same_routing(a, b, tol: float = 1e-5) -> bool:
    """Equal valid slots, equal experts in them, close weights (padding slots may differ)."""
    k = min(a.idx.shape[-1], b.idx.shape[-1])
    extra_a, extra_b = a.valid[..., k:], b.valid[..., k:]
    if bool(extra_a.any()) or bool(extra_b.any()):
        return False
    va, vb = a.valid[..., :k], b.valid[..., :k]
    if not bool((va == vb).all()):
        return False
    if not bool(((a.idx[..., :k] == b.idx[..., :k]) | ~va).all()):
        return False
    return bool(torch.allclose(a.w[..., :k].float().cpu(), b.w[..., :k].float().cpu(), rtol=tol, atol=tol))


def check_routing(device, report) -> None:
    g = torch.Generator().manual_seed(1)
    for name, rule in RULES.items():
        for num_tokens, num_experts in ((19, 8), (5, 16)):
            logits = (torch.randn(num_tokens, num_experts, generator=g) * 2).to(device)
            bias = (torch.randn(num_experts, generator=g) * 0.1).to(device) if rule.scoring == "sigmoid" else None
            plans = [p for p in PLANS if not (rule.scoring == "sparsemixer" and p.mode == "topk" and p.k > 2)]
            got = route_plans(logits, rule, plans, bias, backend="triton")
            want = route_plans(logits.cpu(), rule, plans, None if bias is None else bias.cpu(), backend="reference")
            report(f"routing {name} T={num_tokens} E={num_experts} ({len(plans)} plans)",
                   same_routing(got, want))


def random_weights(g, num_experts, hidden, inter, dtype, layout, bias, act, scale_input, device):
    def r(*shape):
        return (torch.randn(*shape, generator=g) * 0.3).to(dtype).to(device)

    if layout == "concat":  # transformers 5: gate_up_proj [E, 2I, H], down_proj [E, H, I]
        gu, dn = r(num_experts, 2 * inter, hidden), r(num_experts, hidden, inter)
        gate, up, down = gu[:, :inter].transpose(1, 2), gu[:, inter:].transpose(1, 2), dn.transpose(1, 2)
    elif layout == "interleaved":  # GPT-OSS: gate_up_proj [E, H, 2I] even/odd, down_proj [E, I, H]
        gu, down = r(num_experts, hidden, 2 * inter), r(num_experts, inter, hidden)
        gate, up = gu[:, :, 0::2], gu[:, :, 1::2]
    else:  # separate contiguous tensors
        gate, up, down = r(num_experts, hidden, inter), r(num_experts, hidden, inter), r(num_experts, inter, hidden)
    biases = (r(num_experts, inter), r(num_experts, inter), r(num_experts, hidden)) if bias else (None, None, None)
    return ExpertWeights(gate, up, down, *biases, act=act, scale_input=scale_input, source=layout)


def check_grouped(device, dtypes, report) -> None:
    g = torch.Generator().manual_seed(2)
    cases = [  # (E, k, T, H, I, layout, bias, act, scale_input, routing)
        (4, 2, 13, 24, 20, "concat", False, "silu", False, "random"),
        (8, 1, 9, 32, 16, "separate", False, "gelu", False, "random"),
        (6, 3, 11, 20, 12, "interleaved", True, "gpt_oss", False, "random"),
        (5, 2, 10, 16, 24, "concat", False, "silu", True, "random"),
        (4, 2, 12, 16, 16, "concat", True, "gelu_tanh", False, "one_expert"),
        (8, 2, 12, 16, 16, "separate", False, "relu", False, "empty_experts"),
        (4, 2, 8, 16, 16, "concat", False, "silu", False, "empty_slots"),
    ]
    for dtype in dtypes:
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        for e, k, t, h, i, layout, bias, act, scale_input, routing in cases:
            ew = random_weights(g, e, h, i, dtype, layout, bias, act, scale_input, device)
            x = torch.randn(t, h, generator=g).to(dtype).to(device)
            idx = torch.randint(0, e, (t, k), generator=g)
            w = torch.rand(t, k, generator=g)
            valid = torch.ones(t, k, dtype=torch.bool)
            if routing == "one_expert":
                idx[:] = e - 1
            elif routing == "empty_experts":
                idx = idx % 2  # experts 2..E-1 get no token
            elif routing == "empty_slots":
                valid = torch.rand(t, k, generator=g) > 0.4
                w[0] = 0.0
            idx, w, valid = idx.to(device), w.to(device), valid.to(device)
            want = grouped_experts(x.cpu().float(), on_cpu_f32(ew), idx.cpu(), w.cpu(), valid.cpu(),
                                   backend="reference").float()
            for reduce in (True, False):
                got = grouped_experts(x, ew, idx, w, valid, reduce=reduce, backend="triton").float().cpu()
                got = got if reduce else got.sum(dim=1)
                scale = float(want.abs().max()) + 1e-6
                ok = float((got - want).abs().max()) <= tol * scale
                report(f"grouped {layout} {act} E={e} k={k} {routing} {str(dtype)[6:]} reduce={reduce}", ok)


def on_cpu_f32(ew: ExpertWeights) -> ExpertWeights:
    def c(t):
        return None if t is None else t.detach().float().cpu()

    return ExpertWeights(c(ew.gate), c(ew.up), c(ew.down), c(ew.gate_bias), c(ew.up_bias), c(ew.down_bias),
                         act=ew.act, alpha=ew.alpha, limit=ew.limit, scale_input=ew.scale_input)


def check_models(families, device, report) -> None:
    import workbench as wb
    from workbench.replay import capture, loss, replay
    from workbench.testing import tiny_model

    for family in families:
        model, tok = tiny_model(family)
        lm = wb.wrap(model.to(device), tok)
        layer = lm.moe_layers[-1]
        cache = capture(lm, ["The quick brown fox jumps over the lazy dog."], layers=[layer], candidates=None,
                        progress=False)[layer]
        rel = loss(cache, replay(lm, cache, backend="triton")) / max(float(cache.y.double().norm()), 1e-30)
        masked = replay(lm, cache, wb.Mask({layer: [0]}), backend="triton")
        want = replay(lm, cache, wb.Mask({layer: [0]}), backend="torch")
        diff = float((masked.double() - want.double()).abs().max()) / (float(want.abs().max()) + 1e-30)
        report(f"model {family}: own routing reproduces the cached output (rel {rel:.1e})", rel < 1e-5)
        report(f"model {family}: masked replay equals the torch path (rel {diff:.1e})", diff < 1e-5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("routing", "grouped", "models"), action="append")
    parser.add_argument("--families", default="qwen2_moe,deepseek_v3,gpt_oss,llama4_text,dbrx")
    args = parser.parse_args(argv)
    from workbench.kernels.dispatch import triton_interpreting, triton_usable

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not triton_usable(device):
        print("triton check: cannot run: needs the triton package and CUDA, or TRITON_INTERPRET=1 on CPU")
        return 2
    dtypes = [torch.float32, torch.float16]
    if device.type == "cuda" and not triton_interpreting():
        dtypes.append(torch.bfloat16)
    results = []

    def report(name, ok):
        results.append(bool(ok))
        print(f"{'ok  ' if ok else 'FAIL'} {name}", flush=True)

    only = set(args.only or ("routing", "grouped", "models"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the interpreter evaluates log(0), -inf - -inf
        import numpy as np

        with np.errstate(all="ignore"):
            if "routing" in only:
                check_routing(device, report)
            if "grouped" in only:
                check_grouped(device, dtypes, report)
            if "models" in only:
                check_models([f for f in args.families.split(",") if f], device, report)
    failed = results.count(False)
    print(f"triton check: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
