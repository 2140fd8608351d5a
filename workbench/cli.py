"""Command line: ``python -m workbench <command> ...``.

Commands:
    record    record a text file's routing into a trace store (Parquet shards; resumable).
    analyse   every routing analysis of one or more trace stores, as CSV tables.
    sql       run a DuckDB SQL query over trace stores (views: routing, tokens, docs, vocab).
    demo      the main job: record the demo model's held-out corpus and write a report folder.
    info      print what the workbench knows about a model.
    steer     rank experts by contrasting two prompt sets, switch them off/on, measure vs random.
    contrast  greedy vs self-contrast (SCMoE) decoding on a JSONL task file.
    embed     routing-weight (MoEE) embeddings of texts into an ``.npy`` matrix.
    prune     drop experts (enumerative, frequency, random) and save a plain-transformers checkpoint.
    skip      calibrate dynamic-skipping thresholds and save them with the checkpoint.
    families  the coverage matrix: every MoE model type of the installed transformers, checked.

Run ``python -m workbench <command> --help`` for each command's options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workbench.jsonl import read_texts


def _cmd_record(args) -> int:
    import workbench as wb

    lm = wb.load(args.model, trust_remote_code=args.trust_remote_code, device=args.device)
    texts, labels = read_texts(args.texts)
    trace = wb.record(lm, texts, labels=labels, batch_size=args.batch_size, max_length=args.max_length,
                      scores=args.scores, out=args.out, progress=not args.quiet)
    print(f"{trace!r}\nwritten to {args.out}")
    return 0


def _cmd_analyse(args) -> int:
    import workbench as wb
    from workbench.export import save_table
    from workbench.report import analyse

    trace = wb.open_trace(args.traces)
    print(repr(trace))
    out = Path(args.out)
    for name, frame in analyse(trace).items():
        print(f"written: {save_table(frame, out / f'{name}.csv')}  ({len(frame)} rows)")
    return 0


def _cmd_sql(args) -> int:
    import workbench as wb

    frame = wb.open_trace(args.traces).sql(args.query).df()
    if args.out:
        frame.to_csv(args.out, index=False, lineterminator="\n")
        print(f"written: {args.out} ({len(frame)} rows)")
    else:
        print(frame.to_string(index=False, max_rows=args.max_rows))
    return 0


def _cmd_info(args) -> int:
    import workbench as wb

    lm = wb.load(args.model, trust_remote_code=args.trust_remote_code)
    print(lm.describe())
    return 0


def _cmd_families(args) -> int:
    from workbench.families.coverage import compute_matrix
    from workbench.families.publish import format_table, summary, write_matrix

    rows = compute_matrix(args.types or None, progress=not args.quiet, pruning=not args.no_pruning)
    print(format_table(rows))
    print(summary(rows))
    if args.write:
        for path in write_matrix(rows):
            print(f"written: {path}")
    return 0


def _cmd_demo(args) -> int:
    from workbench.report import run_demo

    run_demo(Path(args.out), source=args.model, sample=args.sample, progress=not args.quiet, force=args.force)
    return 0


def _cmd_steer(args) -> int:
    import workbench as wb
    from workbench.steering.pipeline import steer_sets
    from workbench.steering.prompts import read_jsonl_texts

    lm = wb.load(args.model, trust_remote_code=args.trust_remote_code, device=args.device)
    a_texts = [r["text"] for r in read_jsonl_texts(args.a)]
    b_texts = [r["text"] for r in read_jsonl_texts(args.b)]
    contrast, experiment = steer_sets(
        lm, a_texts, b_texts, top=args.top, out=args.out, prompt_tokens=args.prompt_tokens or None,
        seeds=range(args.seeds), mode=args.mode, on_weight=args.weight, max_new_tokens=args.max_new_tokens,
        measure=args.measure, permutations=args.permutations, figures=args.figures, progress=not args.quiet,
        preset=args.preset, activate=args.activate)
    print("\n".join(experiment.report_lines()))
    print(f"wrote {Path(args.out) / 'experts.csv'} and {Path(args.out) / 'experiment.csv'}")
    return 0


def _preset(args):
    """``--preset``: None for the workbench default, else the paper preset's name."""
    return None if args.preset in (None, "workbench") else args.preset


def _cmd_contrast(args) -> int:
    import codecs

    import workbench as wb
    from workbench.contrast.evaluate import GREEDY, evaluate, read_tasks, scmoe

    lm = wb.load(args.model, trust_remote_code=args.trust_remote_code, device=args.device)
    tasks = read_tasks(args.tasks)[: args.sample]
    stop = [codecs.decode(s, "unicode_escape") for s in args.stop] or None
    result = evaluate(lm, tasks, [GREEDY, scmoe(args.beta, args.alpha, args.weak)],
                      max_new_tokens=args.max_new_tokens, stop=stop, bos=False if args.no_bos else None,
                      eos=args.eos, preset=_preset(args), progress=not args.quiet)
    result.save(args.out)
    print(result.summary().to_string(index=False))
    print(f"wrote {Path(args.out) / 'outputs.jsonl'} and {Path(args.out) / 'summary.csv'}")
    return 0


def _cmd_embed(args) -> int:
    """Write MoEE embeddings of a text file as an ``[N, D]`` float32 ``.npy`` (input order).

    ``concat`` standardises HS and RW with statistics fitted on the input texts themselves, or on
    ``--reference`` texts when given, or taken from a saved ``--embedder`` folder; with ``--preset
    moee`` every batch of 64 input texts is standardised on its own, as the reference code does.
    """
    import workbench as wb
    from workbench.embeddings import MoEEmbedder
    from workbench.embeddings.export import embed_to_file

    lm = wb.load(args.model, trust_remote_code=args.trust_remote_code, device=args.device)
    texts, _ = read_texts(args.texts)
    if args.embedder:
        emb = MoEEmbedder.load(args.embedder, lm)
    else:
        layers = [int(x) for x in args.layers.split(",")] if args.layers else None
        emb = MoEEmbedder(lm, template=args.template, unit=args.unit, layers=layers,
                          alpha=1.0 if args.alpha is None else args.alpha, batch_size=args.batch_size,
                          max_length=args.max_length, preset=_preset(args))
    reference = read_texts(args.reference)[0] if args.reference else None
    matrix = embed_to_file(emb, texts, args.kind, args.out, alpha=args.alpha, reference=reference,
                           progress=not args.quiet)
    print(f"{emb.describe()}\nwrote {matrix.shape[0]}x{matrix.shape[1]} float32 ({args.kind}) to {args.out}")
    return 0


def _calibration(args):
    """The model and calibration texts of the ``prune`` and ``skip`` commands."""
    import workbench as wb
    from workbench.pruning.jobs import calibration_texts

    lm = wb.load(args.model, trust_remote_code=args.trust_remote_code, device=args.device)
    return lm, calibration_texts(args.texts, per_domain=args.per_domain, sample=args.sample, seed=args.seed)


def _cmd_prune(args) -> int:
    from workbench.pruning.jobs import prune_job

    lm, texts = _calibration(args)
    result = prune_job(lm, texts, args.out, keep=args.keep, share=args.share, method=args.method,
                       progressive=args.progressive, seed=args.seed, batch_size=args.batch_size,
                       max_length=args.max_length, max_subsets=args.max_subsets, beam_width=args.beam_width,
                       skip=args.skip, progress=not args.quiet, preset=_preset(args))
    print(result.to_dataframe()[["layer", "search", "kept", "loss", "relative_loss"]].to_string(index=False))
    print(f"wrote the pruned checkpoint (r={result.keep}) and {Path(args.out) / 'pruning.csv'}")
    return 0


def _cmd_skip(args) -> int:
    from workbench.pruning.jobs import skip_job

    lm, texts = _calibration(args)
    cal = skip_job(lm, texts, args.out, scale=args.scale, batch_size=args.batch_size, max_length=args.max_length,
                   progress=not args.quiet, preset=_preset(args))
    print(cal.to_dataframe(args.scale).to_string(index=False))
    print(f"wrote the checkpoint with thresholds in its config and {Path(args.out) / 'skipping.csv'}")
    return 0


def _calibration_args(cmd) -> None:
    cmd.add_argument("--model", default="demo", help='"demo", a checkpoint folder, or a hub id')
    cmd.add_argument("--out", required=True, help="output checkpoint folder")
    cmd.add_argument("--force", action="store_true",
                     help="write into a non-empty folder the workbench did not make (default: refuse)")
    cmd.add_argument("--texts", default=None,
                     help="calibration .txt/.jsonl (default: the demo's held-out calibration split)")
    cmd.add_argument("--per-domain", type=int, default=16, help="demo split: calibration documents per domain")
    cmd.add_argument("--sample", type=int, default=None, help="use the first N calibration texts only")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the demo split and of --method random")
    cmd.add_argument("--batch-size", type=int, default=None, help="chunks per calibration batch (default 8)")
    cmd.add_argument("--max-length", type=int, default=None, help="chunk length in tokens")
    cmd.add_argument("--preset", choices=["workbench", "lu2024"], default="workbench",
                     help="calibration units: workbench (documents chunked and padded) or lu2024 (Lu et al.'s "
                          "code: documents shuffled with seed 42, joined, cut into 2048-token blocks)")
    cmd.add_argument("--device", default=None)
    cmd.add_argument("--trust-remote-code", action="store_true")
    cmd.add_argument("--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    rec = sub.add_parser("record", help="record routing of texts into a trace folder")
    rec.add_argument("--model", required=True, help='"demo", a checkpoint folder, or a hub id')
    rec.add_argument("--texts", required=True, help=".txt (one text a line) or .jsonl (text, label)")
    rec.add_argument("--out", required=True, help="store folder (written shard by shard; run again to resume)")
    rec.add_argument("--batch-size", type=int, default=8)
    rec.add_argument("--max-length", type=int, default=None)
    rec.add_argument("--scores", action="store_true", help="also keep full router logits")
    rec.add_argument("--device", default=None)
    rec.add_argument("--trust-remote-code", action="store_true")
    rec.add_argument("--quiet", action="store_true")
    rec.set_defaults(func=_cmd_record)

    ana = sub.add_parser("analyse", help="every routing analysis of trace stores, as CSV tables")
    ana.add_argument("traces", nargs="+", help="store folder(s) of one model (several open as one trace)")
    ana.add_argument("--out", required=True, help="folder for the CSV tables")
    ana.add_argument("--force", action="store_true",
                     help="write into a non-empty folder the workbench did not make (default: refuse)")
    ana.set_defaults(func=_cmd_analyse)

    sql = sub.add_parser("sql", help="DuckDB SQL over trace stores (views: routing, tokens, docs, vocab)")
    sql.add_argument("traces", nargs="+", help="store folder(s) of one model")
    sql.add_argument("--query", required=True,
                     help='e.g. "SELECT layer, expert, count(*) FROM routing GROUP BY ALL"')
    sql.add_argument("--out", default=None, help="write the result to this CSV instead of printing it")
    sql.add_argument("--force", action="store_true", help="replace the file if it exists (default: refuse)")
    sql.add_argument("--max-rows", type=int, default=60, help="rows printed (default 60)")
    sql.set_defaults(func=_cmd_sql)

    info = sub.add_parser("info", help="describe a model's MoE structure")
    info.add_argument("--model", default="demo")
    info.add_argument("--trust-remote-code", action="store_true")
    info.set_defaults(func=_cmd_info)

    demo = sub.add_parser("demo", help="the main job: record the demo corpus and write a report")
    demo.add_argument("--out", default="report", help="report folder (default: report)")
    demo.add_argument("--force", action="store_true",
                     help="write into a non-empty folder the workbench did not make (default: refuse)")
    demo.add_argument("--model", default="demo")
    demo.add_argument("--sample", type=int, default=None, help="documents to record (default: all)")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=_cmd_demo)

    steer = sub.add_parser("steer", help="rank experts by set A vs set B, steer them, measure vs random")
    steer.add_argument("--model", default="demo", help='"demo", a checkpoint folder, or a hub id')
    steer.add_argument("--a", required=True, help="JSONL of set A (one {\"text\": ...} a line)")
    steer.add_argument("--b", required=True, help="JSONL of set B")
    steer.add_argument("--top", type=int, default=10, help="N: experts to switch off / on")
    steer.add_argument("--preset", choices=["workbench", "steermoe"], default="workbench",
                       help="workbench: Welch-t ranking, MoTE's off / random off / on; steermoe: risk-difference "
                            "ranking, set B's experts on and set A's off in one edit vs as many random experts")
    steer.add_argument("--activate", type=int, default=None,
                       help="steermoe: set-B experts to switch on (at most k per layer; default 4)")
    steer.add_argument("--out", required=True, help="folder for experts.csv, experiment.csv, ...")
    steer.add_argument("--force", action="store_true",
                     help="write into a non-empty folder the workbench did not make (default: refuse)")
    steer.add_argument("--prompt-tokens", type=int, default=16, help="tokens per prompt (0 = whole text)")
    steer.add_argument("--seeds", type=int, default=3, help="random-expert controls")
    steer.add_argument("--mode", choices=["next_best", "empty"], default="next_best", help="switch-off semantics")
    steer.add_argument("--weight", type=float, default=None,
                       help="force experts on into a slot with this weight, no renormalisation (default: the "
                            "offset mechanism, weights from the family's own normalisation)")
    steer.add_argument("--max-new-tokens", type=int, default=24)
    steer.add_argument("--measure", choices=["count", "weight"], default="count")
    steer.add_argument("--permutations", type=int, default=1000)
    steer.add_argument("--figures", action="store_true", help="also write contrast.html and experiment.html")
    steer.add_argument("--device", default=None)
    steer.add_argument("--trust-remote-code", action="store_true")
    steer.add_argument("--quiet", action="store_true")
    steer.set_defaults(func=_cmd_steer)
    con = sub.add_parser("contrast", help="greedy vs self-contrast (SCMoE) decoding: accuracy and ms/token")
    con.add_argument("--model", default="demo", help='"demo", a checkpoint folder, or a hub id')
    con.add_argument("--tasks", required=True, help="JSONL, one {\"prompt\": ..., \"answer\": ...} a line")
    con.add_argument("--out", required=True, help="folder for outputs.jsonl and summary.csv")
    con.add_argument("--force", action="store_true",
                     help="write into a non-empty folder the workbench did not make (default: refuse)")
    con.add_argument("--beta", type=float, default=0.5, help="contrast strength")
    con.add_argument("--alpha", type=float, default=0.1, help="plausibility cut-off")
    con.add_argument("--weak", default="rank2", help="weak routing: rankN, top1, random, random:SEED")
    con.add_argument("--max-new-tokens", type=int, default=64)
    con.add_argument("--stop", action="append", default=[], help="stop string (repeatable; '\\n' = newline)")
    con.add_argument("--sample", type=int, default=None, help="evaluate the first N tasks only")
    con.add_argument("--no-bos", action="store_true", help="do not put the tokenizer's BOS before prompts")
    con.add_argument("--eos", choices=["stop", "ban"], default=None,
                     help="at an end-of-sequence token: stop (default) or ban it (the SCMoE code)")
    con.add_argument("--preset", choices=["workbench", "scmoe"], default="workbench",
                     help="workbench (BOS first, stop at EOS) or scmoe: the reference code's definitions "
                          "(the tokenizer's own special tokens, EOS banned)")
    con.add_argument("--device", default=None)
    con.add_argument("--trust-remote-code", action="store_true")
    con.add_argument("--quiet", action="store_true")
    con.set_defaults(func=_cmd_contrast)
    emb = sub.add_parser("embed", help="MoEE text embeddings (rw, hs, concat, sum) into an .npy matrix")
    emb.add_argument("--model", default="demo", help='"demo", a checkpoint folder, or a hub id')
    emb.add_argument("--texts", required=True, help=".txt (one text a line) or .jsonl (text, label)")
    emb.add_argument("--kind", choices=["rw", "hs", "concat", "sum"], default="sum")
    emb.add_argument("--alpha", type=float, default=None, help="RW weight for sum (default 1)")
    emb.add_argument("--out", required=True, help="output .npy, [N, D] float32 in input order")
    emb.add_argument("--force", action="store_true", help="replace the file if it exists (default: refuse)")
    emb.add_argument("--reference", default=None,
                     help="texts to fit concat's standardisation on (default: the input texts)")
    emb.add_argument("--embedder", default=None, help="a saved MoEEmbedder folder (overrides the options below)")
    emb.add_argument("--template", default="none", help='"none", "prompteol" or a custom "...{text}..."')
    emb.add_argument("--unit", choices=["probs", "logits", "weights"], default=None,
                     help="RW unit (default probs; the preset's under --preset moee)")
    emb.add_argument("--preset", choices=["workbench", "moee"], default="workbench",
                     help="workbench (text as is, probs, standardisation fitted once) or moee: the reference "
                          "code's prompt rewriting, raw logits, z-scores per batch of 64 texts")
    emb.add_argument("--layers", default=None, help="comma-separated MoE layers for RW (default: all)")
    emb.add_argument("--batch-size", type=int, default=8)
    emb.add_argument("--max-length", type=int, default=None)
    emb.add_argument("--device", default=None)
    emb.add_argument("--trust-remote-code", action="store_true")
    emb.add_argument("--quiet", action="store_true")
    emb.set_defaults(func=_cmd_embed)
    pru = sub.add_parser("prune", help="drop experts (Lu et al.) and write a checkpoint plain transformers loads")
    _calibration_args(pru)
    how_many = pru.add_mutually_exclusive_group(required=True)
    how_many.add_argument("--keep", type=int, help="R: experts kept per MoE layer")
    how_many.add_argument("--share", type=float, help="fraction of experts pruned per layer")
    pru.add_argument("--method", choices=["enumerate", "frequency", "random", "beam", "greedy"], default="enumerate")
    pru.add_argument("--progressive", action="store_true", help="re-collect inputs after earlier layers are pruned")
    pru.add_argument("--max-subsets", type=int, default=None,
                     help="enumerate while a layer has at most this many drop sets, else beam search (20000)")
    pru.add_argument("--beam-width", type=int, default=1, help="beam width above the switch-over (1 = greedy)")
    pru.add_argument("--skip", action="store_true", help="also calibrate skipping thresholds on the pruned model")
    pru.set_defaults(func=_cmd_prune)
    skp = sub.add_parser("skip", help="calibrate dynamic-skipping thresholds and write them with the checkpoint")
    _calibration_args(skp)
    skp.add_argument("--scale", type=float, default=1.0, help="multiply every threshold (clipped to 1)")
    skp.set_defaults(func=_cmd_skip)
    _add_families(sub)
    return parser


def _add_families(sub) -> None:
    fam = sub.add_parser("families", help="check every MoE model type of the installed transformers (tiny models)")
    fam.add_argument("--types", nargs="*", default=None, help="only these model types (default: every MoE type)")
    fam.add_argument("--write", action="store_true",
                     help="publish the matrix: workbench/families/coverage.csv and docs/supported_models.md")
    fam.add_argument("--no-pruning", action="store_true", help="skip the pruned-checkpoint check (faster)")
    fam.add_argument("--quiet", action="store_true", help="no progress bar")
    fam.set_defaults(func=_cmd_families)


#: How each command writes ``--out``: a folder, a file, or a store (which has rules of its own).
OUT_KIND = {"demo": "folder", "steer": "folder", "contrast": "folder", "prune": "folder", "skip": "folder",
            "analyse": "folder", "embed": "file", "sql": "file", "record": "store"}
INPUTS = ("model", "texts", "a", "b", "tasks", "embedder", "reference", "traces")


def claim_out(args) -> None:
    """Refuse an ``--out`` that is a foreign non-empty folder, an existing file, or one of the inputs."""
    from workbench.outputs import claim_file, claim_folder, check_not_input

    out, kind = getattr(args, "out", None), OUT_KIND.get(args.command)
    if out is None or kind is None:
        return
    inputs = []
    for name in INPUTS:
        value = getattr(args, name, None)
        inputs += value if isinstance(value, list) else [value]
    inputs = [x for x in inputs if isinstance(x, str) and x != "demo"]
    if kind == "folder":
        claim_folder(out, args.command, force=args.force, inputs=inputs, create=False)  # marked when done
    elif kind == "file":
        claim_file(out, force=args.force, inputs=inputs)
    else:
        check_not_input(out, inputs)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        claim_out(args)
        code = args.func(args)
        if code == 0 and OUT_KIND.get(args.command) == "folder" and getattr(args, "out", None):
            from workbench.outputs import mark_folder
            mark_folder(args.out, args.command)
        return code
    except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
