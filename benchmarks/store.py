"""The corpus-scale trace store at a real routing shape: 48 MoE layers, E = 128 experts, top-8.

Measures, in one run and side by side:

(a) recording ``--tokens`` tokens (default 2M) with ``wb.record(..., out=DIR)``: wall time, tokens/s,
    the per-batch time against plain forwards of the same batches, and the peak RSS of the process;
    then plain / hooked / recorded forwards of two batches interleaved (medians), which a changing
    machine load hits alike (the whole-run ratio is only as good as the load was steady);
(b) storage: bytes per slot (token x layer x rank), whole store and shards only, and by column;
(c) opening and analysing in a fresh process: ``open_trace``, ``counts()`` (one pass) and the
    analyses, first computation and again in a second fresh process (aggregates cached on disk); the
    same on a store of ``--small-tokens`` tokens (the corpus prefix) and on a ``select(tokens=...)``
    prefix of the large trace, as seconds per million tokens (linearity);
(d) widget control-change latency (routing explorer, expert card) on the large store;
(e) at ``--small-tokens`` tokens, the store path against the in-memory path (``wb.record`` without
    ``out`` + ``TraceCounts``): seconds and peak RSS.

Every phase runs in its own spawned process and reads ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
at its end, so each peak RSS is that phase's own (the parent imports neither torch nor numpy, so the
exec'd children inherit no high-water mark from it).

Model: a tiny-width random Qwen3-MoE (48 layers, 128 experts, top-8, hidden 16) built from a config
in code, experts run with transformers' ``batched_mm``; word-level tokenizer over 4,092 synthetic
words; 9 domain labels, each with its own preferred words; documents of 448-512 tokens (one chunk
each at ``max_length=512``).

Run:
    python benchmarks/store.py                 # 2M tokens, prints the table, updates RESULTS.md
    python benchmarks/store.py --quick --no-write   # ~50k tokens, to test the script
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECTION = "Trace store at 48 x 128 x 8"
LAYERS, EXPERTS, TOP_K, VOCAB = 48, 128, 8, 4096
DOMAINS = ["code", "math", "news", "legal", "medical", "fiction", "science", "chat", "recipes"]
BATCH, MAX_LENGTH = 16, 512
RSS_TARGET_GB, BYTES_TARGET, BUDGET_MS = 2.5, 4.5, 100.0


# ----------------------------------------------------------------------------------------------
# helpers (children)
# ----------------------------------------------------------------------------------------------
def _rss() -> dict:
    """Peak RSS of this process: ru_maxrss (KB on Linux) and VmHWM of /proc (MB)."""
    out = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["hwm_mb"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Clock:
    """Wall and CPU seconds of a block."""

    def __enter__(self):
        self.t, self.c = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.t, _cpu() - self.c


def _setup_torch():
    import torch
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return torch


def _words(n: int = VOCAB - 4, seed: int = 0) -> list[str]:
    import numpy as np
    rng = np.random.default_rng(seed)
    cons, vow = list("bcdfghjklmnprstvwz"), list("aeiou")
    out, seen = [], set()
    while len(out) < n:
        w = "".join(rng.choice(cons) + rng.choice(vow) for _ in range(int(rng.integers(2, 4))))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def make_tokenizer():
    """A word-level fast tokenizer: ids 0-3 special, then the 4,092 synthetic words (ids < 4096)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(_words())})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=MAX_LENGTH)


def corpus(tokens: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Documents of 448-512 words (= tokens) until ``tokens``; a prefix of a longer corpus of the same seed."""
    import numpy as np
    words = np.array(_words(), dtype=object)
    n = len(words)
    base = np.random.default_rng(seed)
    zipf = 1.0 / np.arange(2, n + 2) ** 1.1
    zipf /= zipf.sum()
    ranks = [base.permutation(n) for _ in DOMAINS]  # each domain's preferred words, by rank
    texts, labels, total, d = [], [], 0, 0
    while total < tokens:
        rng = np.random.default_rng([seed, d])
        g = int(rng.integers(len(DOMAINS)))
        length = int(rng.integers(448, 513))
        own = rng.random(length) < 0.6
        ids = np.where(own, ranks[g][rng.choice(n, size=length, p=zipf)], rng.choice(n, size=length, p=zipf))
        texts.append(" ".join(words[ids]))
        labels.append(DOMAINS[g])
        total += length
        d += 1
    return texts, labels


def make_model(seed: int = 0, router_scale: float = 4.0):
    torch = _setup_torch()
    import workbench as wb
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig
    cfg = Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=16, moe_intermediate_size=4,
                         num_hidden_layers=LAYERS, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         num_experts=EXPERTS, num_experts_per_tok=TOP_K, max_position_embeddings=1024,
                         norm_topk_prob=True)
    cfg._experts_implementation = "batched_mm"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.mul_(router_scale)
    return wb.wrap(model, make_tokenizer(), source="random-qwen3-moe-48x128x8")


def _plain_forwards(lm, texts, batches: int = 3) -> list[tuple[float, float]]:
    """``(wall, cpu)`` seconds of plain forwards (no hooks) of the first ``batches`` batches ``wb.record`` runs."""
    import torch

    from workbench.probes.record import _units, pad_batch
    units = _units(lm, texts[:BATCH * batches], MAX_LENGTH, True)
    pad = lm.tokenizer.pad_token_id
    runs = []
    with torch.no_grad():
        for b in range(batches):
            ids, mask = pad_batch(units[b * BATCH:(b + 1) * BATCH], pad)
            with _Clock() as c:
                lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
            runs.append((c.wall, c.cpu))
    return runs


def interleaved_overhead(lm, texts, batches: int = 2, repeats: int = 5) -> dict:
    """Median ``(wall, cpu)`` per batch of a plain forward, a forward with the recording listener
    installed, and a whole ``wb.record(..., out=DIR)`` of the same ``batches`` batches, interleaved
    ``repeats`` times so that a changing machine load hits all three alike."""
    import torch

    import workbench as wb
    from workbench.probes.record import _Collector, _units, pad_batch
    units = _units(lm, texts[:BATCH * batches], MAX_LENGTH, True)
    inputs = [pad_batch(units[b * BATCH:(b + 1) * BATCH], lm.tokenizer.pad_token_id) for b in range(batches)]

    def plain():
        with torch.no_grad():
            for ids, mask in inputs:
                lm.model(input_ids=ids, attention_mask=mask, use_cache=False)

    def hooked():
        collector = _Collector(lm.moe_layers)
        lm.probes.add_listener(collector)
        try:
            plain()
        finally:
            lm.probes.remove_listener(collector)

    def recorded():
        with tempfile.TemporaryDirectory() as d:
            wb.record(lm, texts[:BATCH * batches], out=d, batch_size=BATCH, max_length=MAX_LENGTH, progress=False)

    runs = {f.__name__: [] for f in (plain, hooked, recorded)}
    for _ in range(repeats):
        for fn in (plain, hooked, recorded):
            with _Clock() as c:
                fn()
            runs[fn.__name__].append((c.wall / batches, c.cpu / batches))
    return {name: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for name, v in runs.items()}


# ----------------------------------------------------------------------------------------------
# phases (each in its own process)
# ----------------------------------------------------------------------------------------------
def phase_record(folder: str, tokens: int) -> dict:
    """(a) record ``tokens`` tokens into a store at ``folder``."""
    import workbench as wb
    lm = make_model()
    texts, labels = corpus(tokens)
    warm = _plain_forwards(lm, texts, 1)[0][0]
    before = _plain_forwards(lm, texts)
    load0 = os.getloadavg()[0]
    with _Clock() as c:
        trace = wb.record(lm, texts, labels, out=folder, batch_size=BATCH, max_length=MAX_LENGTH, progress=False)
    load1 = os.getloadavg()[0]
    rss_record = _rss()["rss_mb"]  # before the plain and interleaved forwards below
    after = _plain_forwards(lm, texts)
    inter = interleaved_overhead(lm, texts)
    batches = -(-len(texts) // BATCH)
    return dict(_rss(), wall=c.wall, cpu=c.cpu, tokens=int(trace.num_tokens), docs=int(trace.num_docs),
                words=sum(len(t.split()) for t in texts), batches=batches, warmup=warm,
                plain_batch=statistics.median(r[0] for r in before + after),
                plain_batch_cpu=statistics.median(r[1] for r in before + after),
                plain_before=[r[0] for r in before], plain_after=[r[0] for r in after], load=(load0, load1),
                interleaved=inter, rss_after_record=rss_record,
                layers=len(trace.layers), k=int(trace.k), experts=int(trace.num_experts))


def phase_storage(folder: str) -> dict:
    """(b) bytes of the store by file and, from the Parquet footers, by column kind."""
    import pyarrow.parquet as pq
    root = Path(folder)
    sizes = {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}
    shards = sorted(root.glob("shards/*.parquet"))
    kinds = {"e_* (expert ids, int16)": 0, "w_* (weights, float16)": 0, "t/doc/pos/token_id": 0}
    raw = dict.fromkeys(kinds, 0)
    for path in shards:
        meta = pq.ParquetFile(str(path)).metadata
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                name = col.path_in_schema.split(".")[0]
                kind = ("e_* (expert ids, int16)" if name.startswith("e_") else
                        "w_* (weights, float16)" if name.startswith("w_") else "t/doc/pos/token_id")
                kinds[kind] += col.total_compressed_size
                raw[kind] += col.total_uncompressed_size
    return dict(_rss(), sizes=sizes, shard_files=len(shards), by_kind=kinds, raw_by_kind=raw)


def _analyses(trace):
    from workbench import analysis as A
    return [("expert_load", lambda: A.expert_load(trace)),
            ("label_specialization+scores", lambda: (A.label_specialization(trace), A.specialization_scores(trace))),
            ("coactivation", lambda: A.coactivation(trace)),
            ("layer_transitions", lambda: A.layer_transitions(trace)),
            ("vocab_specialization", lambda: A.vocab_specialization(trace))]


def phase_analyse(folder: str, prefix: int | None = None, profile: str | None = None) -> dict:
    """(c) open ``folder`` in this fresh process, compute counts and the analyses (twice each)."""
    import workbench as wb  # noqa: F401  (imports outside the timings)
    from workbench import analysis  # noqa: F401
    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    out = {}
    with _Clock() as c:
        trace = wb.open_trace(folder)
    out["open"] = c.wall
    if prefix is not None:
        with _Clock() as c:
            trace = trace.select(tokens=(0, prefix))
        out["select"] = c.wall
    with _Clock() as c:
        trace.counts()
    out["counts"], out["counts_cpu"] = c.wall, c.cpu
    for name, fn in _analyses(trace):
        with _Clock() as c:
            fn()
        with _Clock() as again:
            fn()
        out[name], out[name + " (again)"] = c.wall, again.wall
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    agg = Path(folder) / "aggregates"
    out["aggregates_bytes"] = sum(p.stat().st_size for p in agg.rglob("*") if p.is_file()) if agg.exists() else 0
    return dict(_rss(), tokens=int(trace.num_tokens), **out)


def _timed(fn, repeats: int) -> list[float]:
    ms = []
    for i in range(repeats):
        t = time.perf_counter()
        fn(i)
        ms.append((time.perf_counter() - t) * 1000)
    return ms


def phase_widgets(folder: str, repeats: int = 7) -> dict:
    """(d) control-change latency of the explorer and the expert card on a stored trace."""
    import plotly.graph_objects as go

    import workbench as wb
    from workbench.widgets import ExpertCard, RoutingExplorer
    go.FigureWidget(go.Heatmap(z=[[0, 1]]))  # plotly widget imports out of the way
    with _Clock() as c:
        trace = wb.open_trace(folder)
        trace.counts()
    open_s = c.wall
    with _Clock() as c:
        explorer = RoutingExplorer(trace)
    build_explorer = c.wall
    with _Clock() as c:
        card = ExpertCard(trace)
    build_card = c.wall
    layers = trace.layers
    labels = [explorer.label.options[1 + i % (len(explorer.label.options) - 1)] for i in range(9)]
    metrics = [v for _, v in explorer.metric.options]
    n = len(layers)
    cases = {
        "explorer: layers": lambda i: setattr(explorer.layers, "value", tuple(layers[i % 3::2])),
        "explorer: label": lambda i: setattr(explorer.label, "value", labels[i % len(labels)]),
        "explorer: metric": lambda i: setattr(explorer.metric, "value", metrics[(i + 1) % len(metrics)]),
        "explorer: document": lambda i: setattr(explorer.doc, "value", (997 * i + 3) % trace.num_docs),
        "explorer: window start": lambda i: setattr(explorer.start, "value", (i % 3 + 1) * 32),
        "explorer: slot rank": lambda i: setattr(explorer.rank, "value", (i + 1) % trace.k),
        "explorer: click a cell": lambda i: explorer.show_cell(layers[(7 * i) % n], (5 * i) % trace.num_experts),
        "card: layer": lambda i: setattr(card.layer, "value", layers[(7 * i + 1) % n]),
        "card: expert": lambda i: setattr(card.expert, "value", (3 * i + 1) % trace.num_experts),
    }
    explorer.layers.value = tuple(layers)
    rows = []
    for name, fn in cases.items():
        ms = _timed(fn, repeats)
        rows.append((name, statistics.median(ms), max(ms)))
    return dict(_rss(), rows=rows, open=open_s, build_explorer=build_explorer, build_card=build_card,
                docs=int(trace.num_docs), tokens=int(trace.num_tokens))


def phase_in_memory(tokens: int) -> dict:
    """(e) the in-memory path: ``wb.record`` without ``out``, ``TraceCounts``, the analyses."""
    import workbench as wb
    from workbench.analysis import TraceCounts
    lm = make_model()
    texts, labels = corpus(tokens)
    _plain_forwards(lm, texts, 1)  # the same warm-up forward as the store path
    out = {}
    with _Clock() as c:
        trace = wb.record(lm, texts, labels, batch_size=BATCH, max_length=MAX_LENGTH, progress=False)
    out["record"], out["record_cpu"], out["rss_after_record"] = c.wall, c.cpu, _rss()["rss_mb"]
    with _Clock() as c:
        counts = TraceCounts(trace)
    out["counts"], out["rss_after_counts"] = c.wall, _rss()["rss_mb"]
    for name, fn in _analyses(counts):
        with _Clock() as c:
            fn()
        out[name] = c.wall
    return dict(_rss(), tokens=int(trace.num_tokens), **out)


def phase_store_path(folder: str, tokens: int) -> dict:
    """(e) the store path in one process: record to ``folder``, open, counts, the analyses."""
    import workbench as wb
    lm = make_model()
    texts, labels = corpus(tokens)
    _plain_forwards(lm, texts, 1)
    out = {}
    with _Clock() as c:
        wb.record(lm, texts, labels, out=folder, batch_size=BATCH, max_length=MAX_LENGTH, progress=False)
    out["record"], out["record_cpu"], out["rss_after_record"] = c.wall, c.cpu, _rss()["rss_mb"]
    with _Clock() as c:
        trace = wb.open_trace(folder)
        trace.counts()
    out["counts"], out["rss_after_counts"] = c.wall, _rss()["rss_mb"]
    for name, fn in _analyses(trace):
        with _Clock() as c:
            fn()
        out[name] = c.wall
    return dict(_rss(), tokens=int(trace.num_tokens), **out)


def in_child(fn, *args, **kwargs):
    """Run ``fn`` in a fresh spawned process and return its result."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


# ----------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------
def _gb(mb: float) -> str:
    return f"{mb / 1024:.2f} GB"


def _ok(flag: bool) -> str:
    return "yes" if flag else "NO"


ANALYSES = ["expert_load", "label_specialization+scores", "coactivation", "layer_transitions",
            "vocab_specialization"]


def report(res: dict, args) -> list[str]:
    rec, st, big, big2 = res["record"], res["storage"], res["analyse"], res["analyse_cached"]
    T = rec["tokens"]
    slots = T * rec["layers"] * rec["k"]
    sizes = st["sizes"]
    total = sum(v for k, v in sizes.items() if not k.startswith("aggregates/"))
    shard = sum(v for k, v in sizes.items() if k.startswith("shards/"))
    per_batch = rec["wall"] / rec["batches"]
    rss_record = rec.get("rss_after_record", rec["rss_mb"])
    inter = rec["interleaved"]
    lines = [
        f"model: random Qwen3-MoE from config, {rec['layers']} MoE layers, E={rec['experts']}, top-{rec['k']}, "
        f"hidden 16, experts 'batched_mm'; word-level tokenizer (4,092 words), {len(DOMAINS)} labels",
        f"corpus: {T:,} tokens recorded ({rec['words']:,} words), {rec['docs']:,} documents of 448-512 tokens; "
        f"batch {BATCH} x <= {MAX_LENGTH}",
        f"{platform.machine()}, {os.cpu_count()} cores, torch threads 2, Python {platform.python_version()}; "
        f"every phase in its own spawned process; peak RSS = ru_maxrss at the end of that process",
        f"load average at the end: {res['load']}; workbench at {res['head'][0]} (start), {res['head'][-1]} (end)",
        "",
        "(a) recording (wb.record(..., out=DIR))",
        f"  wall {rec['wall']:.1f} s (cpu {rec['cpu']:.1f} s), {T / rec['wall']:,.0f} tok/s, {rec['batches']} batches",
        f"  per batch {per_batch:.2f} s vs plain forward of the same batches {rec['plain_batch']:.2f} s (median of 3 "
        f"before + 3 after, after a {rec['warmup']:.1f} s warm-up forward): "
        f"ratio {per_batch / rec['plain_batch']:.3f}x",
        f"  CPU seconds: per batch {rec['cpu'] / rec['batches']:.2f} vs plain {rec['plain_batch_cpu']:.2f}: ratio "
        f"{rec['cpu'] / rec['batches'] / rec['plain_batch_cpu']:.3f}x (the whole wb.record call: tokenising, hooks, "
        "writing shards; the last batch is partial)",
        f"  1-min load average at start/end of the recording: {rec['load'][0]:.1f} / {rec['load'][1]:.1f}",
        "  interleaved, same 2 batches, median of 5 rounds (wall s / CPU s per batch; robust to a changing load):",
        "    " + ", ".join(f"{name} {w:.2f} / {c:.2f}" for name, (w, c) in inter.items())
        + f"; ratio record/plain {inter['recorded'][0] / inter['plain'][0]:.2f}x wall, "
        f"{inter['recorded'][1] / inter['plain'][1]:.2f}x CPU; "
        f"hooks/plain {inter['hooked'][0] / inter['plain'][0]:.2f}x wall",
        (f"  peak RSS {_gb(rec['rss_after_record'])} at the end of wb.record, {_gb(rec['rss_mb'])} at the end "
         "of the phase" if "rss_after_record" in rec else
         f"  peak RSS {_gb(rec['rss_mb'])} (the whole phase: wb.record, then the plain and interleaved forwards)")
        + f" (target < {RSS_TARGET_GB} GB: {_ok(rss_record / 1024 < RSS_TARGET_GB)})",
        "",
        "(b) storage",
        f"  store {total / 1e9:.3f} GB = {total / slots:.2f} bytes/slot (ids + weights; target <= {BYTES_TARGET}: "
        f"{_ok(total / slots <= BYTES_TARGET)}); shards only {shard / slots:.2f} bytes/slot, "
        f"{st['shard_files']} shard files",
    ]
    for kind, b in st["by_kind"].items():
        raw = st["raw_by_kind"][kind]
        lines.append(f"    {kind:<26} {b / slots:5.2f} bytes/slot compressed ({raw / slots:.2f} raw)")
    agg = big.get("aggregates_bytes", 0)
    lines.append(f"  aggregates/ written by the analyses: {agg / 1e6:.1f} MB (not counted above)")

    small, small_sel = res["analyse_small"], res["analyse_prefix"]
    lines += [
        "",
        "(c) open and analyse in a fresh process (seconds; 'cached' = a second fresh process, aggregates on disk;",
        "    s/Mtok = first-time seconds per million tokens)",
        f"  {'':<28} {'first':>8} {'cached':>8} {'s/Mtok':>7} | {'%dk store' % (small['tokens'] // 1000):>10} "
        f"{'s/Mtok':>7} | {'select(0,%dk)' % (small_sel['tokens'] // 1000):>13} {'s/Mtok':>7}",
    ]
    mt_big, mt_small, mt_sel = T / 1e6, small["tokens"] / 1e6, small_sel["tokens"] / 1e6
    def row(name, b, b2, sm, sel):
        return (f"  {name:<28} {b:8.3f} {b2:8.3f} {b / mt_big:7.2f} | {sm:10.3f} {sm / mt_small:7.2f} | "
                f"{sel:13.3f} {sel / mt_sel:7.2f}")

    for name in ["open", "counts"] + ANALYSES:
        sel = small_sel[name] + (small_sel.get("select", 0) if name == "open" else 0)
        lines.append(row(name, big[name], big2[name], small[name], sel))
    tot = lambda r: sum(r[n] for n in ["counts"] + ANALYSES)  # noqa: E731
    lines.append(row("total (counts + analyses)", tot(big), tot(big2), tot(small), tot(small_sel)))
    memo = max(big[n + " (again)"] for n in ANALYSES)
    lines.append(f"  in-process second call of each analysis (memo): max {memo:.3f} s")
    worst = max(big["rss_mb"], big2["rss_mb"], small["rss_mb"], small_sel["rss_mb"])
    lines.append(f"  peak RSS: first {_gb(big['rss_mb'])}, cached {_gb(big2['rss_mb'])}, "
                 f"{small['tokens'] // 1000}k store {_gb(small['rss_mb'])}, select prefix {_gb(small_sel['rss_mb'])} "
                 f"(target < {RSS_TARGET_GB} GB: {_ok(worst / 1024 < RSS_TARGET_GB)})")

    wd = res["widgets"]
    width = max(len(r[0]) for r in wd["rows"])
    lines += [
        "",
        f"(d) widget control changes on the {wd['tokens']:,}-token store ({wd['docs']:,} documents), "
        "aggregates cached;",
        f"    Python time from setting .value until the figures/HTML hold the new state; median and worst of "
        f"{args.repeats}; budget {BUDGET_MS:.0f} ms",
        f"  open + counts (cached) {wd['open']:.2f} s; build: explorer {wd['build_explorer']:.2f} s, "
        f"expert card {wd['build_card']:.2f} s; peak RSS {_gb(wd['rss_mb'])}",
        f"  {'control':<{width}}  median ms  max ms  within budget",
    ]
    lines += [f"  {name:<{width}}  {med:9.1f}  {most:6.1f}  {_ok(most <= BUDGET_MS)}" for name, med, most in wd["rows"]]

    mem, sto = res["in_memory"], res["store_path"]
    lines += [
        "",
        f"(e) {mem['tokens']:,} tokens, one process each: in memory (RoutingTrace + TraceCounts) vs store "
        "(record out=DIR, open_trace, counts)",
        f"  {'seconds':<28} {'in memory':>10} {'store':>8} {'store/mem':>10}",
    ]
    for name in ["record", "counts"] + ANALYSES:
        lines.append(f"  {name:<28} {mem[name]:10.3f} {sto[name]:8.3f} {sto[name] / max(mem[name], 1e-9):10.2f}")
    lines.append(f"  {'counts + analyses':<28} {tot(mem):10.3f} {tot(sto):8.3f} {tot(sto) / max(tot(mem), 1e-9):10.2f}")
    lines.append(f"  {'record, CPU seconds':<28} {mem['record_cpu']:10.3f} {sto['record_cpu']:8.3f} "
                 f"{sto['record_cpu'] / mem['record_cpu']:10.2f}")
    for key, what in (("rss_after_record", "peak RSS after record (GB)"),
                      ("rss_after_counts", "... after counts (GB)"), ("rss_mb", "peak RSS at the end (GB)")):
        lines.append(f"  {what:<28} {mem[key] / 1024:10.2f} {sto[key] / 1024:8.2f} {sto[key] / mem[key]:10.2f}")
    return lines


def _head() -> str:
    """The checked-out commit (and whether workbench/ has uncommitted changes) at this moment."""
    import subprocess
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "workbench"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return head + (" + uncommitted changes in workbench/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2_000_000)
    parser.add_argument("--small-tokens", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="~50k tokens (20k small): test the script")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--reuse", action="store_true", help="keep an existing large store (skip recording "
                        "only if it is complete; timings of (a) then come from the saved json)")
    parser.add_argument("--profile", action="store_true", help="cProfile the first-time analysis (.prof in DIR)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.small_tokens = 50_000, 20_000
    work = Path(args.dir or tempfile.mkdtemp(prefix="wb-store-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    big, small = work / "big", work / "small"
    res = {"head": [_head()]}
    saved = work / "record.json"
    step = lambda s: print(f"[{time.strftime('%H:%M:%S')}] {s}", flush=True)  # noqa: E731
    try:
        if args.reuse and saved.exists() and (big / "manifest.json").exists():
            res["record"] = json.loads(saved.read_text())
            step("reusing the recorded large store")
        else:
            shutil.rmtree(big, ignore_errors=True)
            step(f"(a) recording {args.tokens:,} tokens")
            res["record"] = in_child(phase_record, str(big), args.tokens)
            saved.write_text(json.dumps(res["record"]))
        step(f"    {res['record']}")
        shutil.rmtree(big / "aggregates", ignore_errors=True)
        res["storage"] = in_child(phase_storage, str(big))
        step("(c) analysing the large store in a fresh process")
        res["analyse"] = in_child(phase_analyse, str(big), None, str(work / "analyse.prof") if args.profile else None)
        step(f"    {res['analyse']}")
        res["analyse_cached"] = in_child(phase_analyse, str(big))
        step(f"    cached: {res['analyse_cached']}")
        step("(d) widgets")
        res["widgets"] = in_child(phase_widgets, str(big), args.repeats)
        step(f"    {res['widgets']}")
        step(f"(c) select prefix of {args.small_tokens:,} tokens")
        res["analyse_prefix"] = in_child(phase_analyse, str(big), args.small_tokens)
        step(f"    {res['analyse_prefix']}")
        step(f"(e) {args.small_tokens:,} tokens in memory")
        res["in_memory"] = in_child(phase_in_memory, args.small_tokens)
        step(f"    {res['in_memory']}")
        step(f"(e) {args.small_tokens:,} tokens to a store")
        shutil.rmtree(small, ignore_errors=True)
        res["store_path"] = in_child(phase_store_path, str(small), args.small_tokens)
        step(f"    {res['store_path']}")
        shutil.rmtree(small / "aggregates")
        res["analyse_small"] = in_child(phase_analyse, str(small))
        step(f"    small fresh: {res['analyse_small']}")
        res["head"].append(_head())
        res["load"] = ", ".join(f"{x:.1f}" for x in os.getloadavg()) + f" ({os.cpu_count()} cores)"
        (work / "results.json").write_text(json.dumps(res, indent=1, default=str))
    finally:
        if not (args.keep or args.dir):
            shutil.rmtree(work, ignore_errors=True)
    lines = report(res, args)
    print("\n".join(lines))
    if not args.no_write:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from results import write_section
        command = "python benchmarks/store.py" + (f" --tokens {args.tokens}" if args.tokens != 2_000_000 else "")
        write_section(SECTION, command, lines)
        print(f"updated the section '{SECTION}' of {ROOT / 'benchmarks' / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
