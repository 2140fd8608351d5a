"""Command line: python -m workbench COMMAND [options]

Commands:
    record    record a text file's routing into a trace store (Parquet shards; resumable).
    analyse   every routing analysis of one or more trace stores, as CSV tables.
    sql       run a DuckDB SQL query over trace stores (views: routing, tokens, docs, vocab).
    report    record a model's routing of a text file and write a report folder (figures, tables, trace).
    demo      the main job: the report of the demo model on its held-out corpus.
    info      print what the workbench knows about a model.
    steer     rank experts by contrasting two prompt sets, switch them off/on, measure vs random.
    contrast  greedy vs self-contrast (SCMoE) decoding on a JSONL task file: accuracy and ms/token.
    embed     routing-weight (MoEE) embeddings of texts into an .npy matrix.
    prune     drop experts (enumerative, frequency, random) and save a plain-transformers checkpoint.
    skip      calibrate dynamic-skipping thresholds and save them with the checkpoint.
    families  the coverage matrix: every MoE model type of the installed transformers, checked.

Models (--model): "demo" (the checkpoint shipped with the package), a local checkpoint folder, or a
Hugging Face hub id such as org/name.

Run python -m workbench COMMAND --help for each command's options. A wrong input is reported in one
line (exit status 2); --traceback shows the full Python traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from workbench.commands import (_cmd_analyse, _cmd_contrast, _cmd_demo, _cmd_embed, _cmd_families, _cmd_info,
                                _cmd_prune, _cmd_record, _cmd_report, _cmd_skip, _cmd_sql, _cmd_steer,
                                LONG_TOKENS, task_settings)  # noqa: F401 (cli.task_settings is used by tests and notebooks)

MODEL_HELP = '"demo", a checkpoint folder, or a hub id (org/name)'
TEXTS_HELP = '.txt (one text a line) or .jsonl (one {"text": ..., "label": ...} a line)'


# -- the parser ----------------------------------------------------------------------------
class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, ``(default: ...)``, unless it says it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.required or action.default is argparse.SUPPRESS \
                or "(default" in text or "%(default)" in text:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: {'on' if action.default else 'off'})"
        if action.default is None:
            return text
        return f"{text} (default: %(default)s)"


class TopHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The top-level help: its description as written (line breaks kept)."""


def _common(cmd, *, device: bool = True, quiet: bool = True, remote: bool = True) -> None:
    if device:
        cmd.add_argument("--device", default=None, help='e.g. "cuda" or "cuda:1" (default: the CPU)')
    if remote:
        cmd.add_argument("--trust-remote-code", action="store_true",
                         help="allow the checkpoint's own Python code (needed by some hub models)")
    if quiet:
        cmd.add_argument("--quiet", action="store_true", help="no progress bars")


def _force(cmd, what: str = "folder") -> None:
    if what == "folder":
        cmd.add_argument("--force", action="store_true",
                         help="write into a non-empty folder the workbench did not make (default: refuse)")
    else:
        cmd.add_argument("--force", action="store_true", help="replace the file if it exists (default: refuse)")


def _calibration_args(cmd, command: str) -> None:
    cmd.add_argument("--model", default="demo", help=MODEL_HELP)
    cmd.add_argument("--out", required=True, help="output checkpoint folder")
    _force(cmd)
    cmd.add_argument("--texts", default=None,
                     help=f"calibration texts, {TEXTS_HELP} (default: the demo's held-out calibration split)")
    sizes = ("; 4 (notebook 02's setting) makes about 0.65 GB of layer caches on the demo model, 16 about 2.6 GB"
             if command == "prune" else " (as prune's)")
    cmd.add_argument("--per-domain", type=int, default=4,
                     help=f"demo split: calibration documents per domain{sizes}")
    cmd.add_argument("--sample", type=int, default=None, help="use the first N calibration texts only (default: all)")
    seed_of = "the demo split and of --method random" if command == "prune" else "the demo split"
    cmd.add_argument("--seed", type=int, default=0, help=f"seed of {seed_of}")
    cmd.add_argument("--batch-size", type=int, default=None,
                     help="chunks per calibration batch (default: 8; the preset's under --preset lu2024)")
    cmd.add_argument("--max-length", type=int, default=None,
                     help="chunk length in tokens (default: the model's context, at most 2048)")
    cmd.add_argument("--preset", choices=["workbench", "lu2024"], default="workbench",
                     help="calibration units: workbench (documents chunked and padded) or lu2024 (Lu et al.'s "
                          "code: documents shuffled with seed 42, joined, cut into 2048-token blocks)")
    _common(cmd)


def _sub(sub, name: str, help: str, description: str | None = None):
    return sub.add_parser(name, help=help, description=description or help, formatter_class=HelpFormatter)


#: The top-level help (the commands list follows it, from each command's own help).
DESCRIPTION = __doc__[__doc__.index("Models (--model)"):]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description=DESCRIPTION,
                                     formatter_class=TopHelpFormatter)
    parser.add_argument("--traceback", action="store_true",
                        help="on an error, show the full Python traceback (default: one line)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rec = _sub(sub, "record", "record routing of texts into a trace folder")
    rec.add_argument("--model", required=True, help=MODEL_HELP)
    rec.add_argument("--texts", required=True, help=TEXTS_HELP)
    rec.add_argument("--out", required=True, help="store folder (written shard by shard; run again to resume)")
    rec.add_argument("--batch-size", type=int, default=8, help="texts per forward pass")
    rec.add_argument("--max-length", type=int, default=None,
                     help="tokens kept per text (default: the model's context)")
    rec.add_argument("--scores", action="store_true", help="also keep full router logits")
    rec.add_argument("--backend", choices=["transformers", "vllm"], default="transformers",
                     help="run the model in transformers or in a vLLM engine (default: transformers)")
    rec.add_argument("--tensor-parallel-size", type=int, default=1,
                     help="vLLM only: GPUs per model replica (default: 1)")
    rec.add_argument("--pipeline-parallel-size", type=int, default=1,
                     help="vLLM only: pipeline stages (default: 1)")
    rec.add_argument("--max-model-len", type=int, default=None,
                     help="vLLM only: longest prompt the engine accepts (default: the engine's)")
    _common(rec)
    rec.set_defaults(func=_cmd_record)

    ana = _sub(sub, "analyse", "every routing analysis of trace stores, as CSV tables")
    ana.add_argument("traces", nargs="+", help="store folder(s) of one model (several open as one trace)")
    ana.add_argument("--out", required=True, help="folder for the CSV tables")
    _force(ana)
    _common(ana, device=False, remote=False)
    ana.set_defaults(func=_cmd_analyse)

    sql = _sub(sub, "sql", "DuckDB SQL over trace stores (views: routing, tokens, docs, vocab)")
    sql.add_argument("traces", nargs="+", help="store folder(s) of one model")
    sql.add_argument("--query", required=True,
                     help='e.g. "SELECT layer, expert, count(*) FROM routing GROUP BY ALL"')
    sql.add_argument("--out", default=None, help="write the result to this CSV (default: print it)")
    _force(sql, "file")
    sql.add_argument("--max-rows", type=int, default=60, help="rows printed")
    _common(sql, device=False, remote=False)
    sql.set_defaults(func=_cmd_sql)

    rep = _sub(sub, "report", "record a model's routing of texts and write a report folder",
               "Record the routing of --texts on --model (router scores kept), run every analysis and write "
               "--out: index.html, figures/ (HTML and PNG), tables/ (CSV) and trace/ (the store). "
               "With no options it is 'python -m workbench demo': the demo model on its held-out corpus.")
    rep.add_argument("--model", default="demo", help=MODEL_HELP)
    rep.add_argument("--texts", default=None,
                     help=f"{TEXTS_HELP}; labels enable the domain tables (default: the demo's held-out corpus)")
    rep.add_argument("--out", default="report", help="report folder")
    _force(rep)
    rep.add_argument("--sample", type=int, default=None,
                     help="documents to record, round-robin over labels (default: all)")
    rep.add_argument("--max-length", type=int, default=None,
                     help="tokens recorded per document (default: 512, or the model's context if shorter)")
    rep.add_argument("--dtype", default=None,
                     help='e.g. "bfloat16" for a large checkpoint (default: the checkpoint\'s)')
    _common(rep)
    rep.set_defaults(func=_cmd_report)

    demo = _sub(sub, "demo", "the main job: the report of the demo model on its held-out corpus",
                "The report command's default case: the demo model on its held-out corpus.")
    demo.add_argument("--out", default="report", help="report folder")
    _force(demo)
    demo.add_argument("--model", default="demo", help=MODEL_HELP)
    demo.add_argument("--sample", type=int, default=None, help="documents to record (default: all)")
    _common(demo, device=False, remote=False)
    demo.set_defaults(func=_cmd_demo)

    info = _sub(sub, "info", "describe a model's MoE structure")
    info.add_argument("--model", default="demo", help=MODEL_HELP)
    _common(info, device=False)
    info.set_defaults(func=_cmd_info)

    steer = _sub(sub, "steer", "rank experts by set A vs set B, steer them, measure vs random")
    steer.add_argument("--model", default="demo", help=MODEL_HELP)
    steer.add_argument("--a", required=True, help="JSONL of set A (one {\"text\": ...} a line)")
    steer.add_argument("--b", required=True, help="JSONL of set B")
    steer.add_argument("--top", type=int, default=10, help="N: experts to switch off / on")
    steer.add_argument("--preset", choices=["workbench", "steermoe"], default="workbench",
                       help="workbench: Welch-t ranking, MoTE's off / random off / on; steermoe: risk-difference "
                            "ranking, set B's experts on and set A's off in one edit vs as many random experts")
    steer.add_argument("--activate", type=int, default=None,
                       help="steermoe: set-B experts to switch on, at most k per layer (default: 4)")
    steer.add_argument("--out", required=True,
                       help="folder for experts.csv, experiment.csv, summary.csv, continuations.csv, settings.json")
    _force(steer)
    steer.add_argument("--prompt-tokens", type=int, default=16, help="tokens per prompt (0 = whole text)")
    steer.add_argument("--seeds", type=int, default=3, help="random-expert controls")
    steer.add_argument("--mode", choices=["next_best", "empty"], default="next_best", help="switch-off semantics")
    steer.add_argument("--weight", type=float, default=None,
                       help="force experts on into a slot with this weight, no renormalisation (default: the "
                            "offset mechanism, weights from the family's own normalisation)")
    steer.add_argument("--max-new-tokens", type=int, default=24, help="tokens generated per prompt")
    steer.add_argument("--measure", choices=["count", "weight"], default="count",
                       help="what the ranking compares: top-k selections or routing weight")
    steer.add_argument("--permutations", type=int, default=1000, help="permutations of the ranking's p-values")
    steer.add_argument("--figures", action="store_true", help="also write contrast.html and experiment.html")
    _common(steer)
    steer.set_defaults(func=_cmd_steer)

    con = _sub(sub, "contrast", "greedy vs self-contrast (SCMoE) decoding: accuracy and ms/token",
               "Greedy vs self-contrast (SCMoE) decoding, run interleaved task by task: exact-match accuracy "
               "and ms per new token (prompt pass included, after a warm-up decode, on --threads CPU threads).")
    con.add_argument("--model", default="demo", help=MODEL_HELP)
    con.add_argument("--tasks", default="demo",
                     help="JSONL, one {\"prompt\": ..., \"answer\": ...} a line, or \"demo\": the demo's held-out sums")
    con.add_argument("--out", required=True, help="folder for outputs.jsonl and summary.csv")
    _force(con)
    con.add_argument("--beta", type=float, default=0.5, help="contrast strength")
    con.add_argument("--alpha", type=float, default=0.1, help="plausibility cut-off")
    con.add_argument("--weak", default="rank2", help="weak routing: rankN, top1, random, random:SEED")
    con.add_argument("--max-new-tokens", type=int, default=None,
                     help="most new tokens per answer (default: from the answers: one-line answers get their "
                          f"longest length + 2, at least 6; worked solutions (\"#### N\") {LONG_TOKENS})")
    con.add_argument("--stop", action="append", default=None,
                     help="stop string, repeatable; '\\n' = newline (default: '\\n' for one-line answers, a blank "
                          "line '\\n\\n' for worked solutions)")
    con.add_argument("--no-stop", action="store_true", help="no stop string: only EOS and --max-new-tokens end")
    con.add_argument("--sample", type=int, default=None, help="evaluate the first N tasks only (default: all)")
    con.add_argument("--no-bos", action="store_true", help="do not put the tokenizer's BOS before prompts")
    con.add_argument("--eos", choices=["stop", "ban"], default=None,
                     help="at an end-of-sequence token: stop or ban it (the SCMoE code) (default: stop; ban "
                          "under --preset scmoe)")
    con.add_argument("--preset", choices=["workbench", "scmoe"], default="workbench",
                     help="workbench (BOS first, stop at EOS) or scmoe: the reference code's definitions "
                          "(the tokenizer's own special tokens, EOS banned)")
    con.add_argument("--threads", type=int, default=1,
                     help="CPU threads while timing; 0 = torch's default (all cores). One thread keeps ms/token "
                          "stable on a shared machine, where several threads wait on each other "
                          "(benchmarks/contrast.py uses 1)")
    _common(con)
    con.set_defaults(func=_cmd_contrast)

    emb = _sub(sub, "embed", "MoEE text embeddings (rw, hs, concat, sum) into an .npy matrix",
               _cmd_embed.__doc__)
    emb.add_argument("--model", default="demo", help=MODEL_HELP)
    emb.add_argument("--texts", required=True, help=TEXTS_HELP)
    emb.add_argument("--kind", choices=["rw", "hs", "concat", "sum"], default="sum",
                     help="routing weights, hidden states, both side by side, or their weighted sum")
    emb.add_argument("--alpha", type=float, default=None, help="RW weight for sum (default: 1)")
    emb.add_argument("--out", required=True, help="output .npy, [N, D] float32 in input order")
    _force(emb, "file")
    emb.add_argument("--reference", default=None,
                     help="texts to fit concat's standardisation on (default: the input texts)")
    emb.add_argument("--embedder", default=None,
                     help="a saved MoEEmbedder folder; overrides the options below (default: none)")
    emb.add_argument("--template", default="none", help='"none", "prompteol" or a custom "...{text}..."')
    emb.add_argument("--unit", choices=["probs", "logits", "weights"], default=None,
                     help="RW unit (default: probs; the preset's under --preset moee)")
    emb.add_argument("--preset", choices=["workbench", "moee"], default="workbench",
                     help="workbench (text as is, probs, standardisation fitted once) or moee: the reference "
                          "code's prompt rewriting, raw logits, z-scores per batch of 64 texts")
    emb.add_argument("--layers", default=None, help="comma-separated MoE layers for RW (default: all)")
    emb.add_argument("--batch-size", type=int, default=8, help="texts per forward pass")
    emb.add_argument("--max-length", type=int, default=None, help="tokens kept per text (default: the model's context)")
    _common(emb)
    emb.set_defaults(func=_cmd_embed)

    pru = _sub(sub, "prune", "drop experts (Lu et al.) and write a checkpoint plain transformers loads")
    _calibration_args(pru, "prune")
    how_many = pru.add_mutually_exclusive_group(required=True)
    how_many.add_argument("--keep", type=int, help="R: experts kept per MoE layer (this or --share is required)")
    how_many.add_argument("--share", type=float, help="fraction of experts pruned per layer (or --keep)")
    pru.add_argument("--method", choices=["enumerate", "frequency", "random", "beam", "greedy"], default="enumerate",
                     help="how the kept experts are chosen")
    pru.add_argument("--progressive", action="store_true", help="re-collect inputs after earlier layers are pruned")
    pru.add_argument("--max-subsets", type=int, default=None,
                     help="enumerate while a layer has at most this many drop sets, else beam search (default: 20000)")
    pru.add_argument("--beam-width", type=int, default=1, help="beam width above the switch-over (1 = greedy)")
    pru.add_argument("--skip", action="store_true", help="also calibrate skipping thresholds on the pruned model")
    pru.set_defaults(func=_cmd_prune)

    skp = _sub(sub, "skip", "calibrate dynamic-skipping thresholds and write them with the checkpoint")
    _calibration_args(skp, "skip")
    skp.add_argument("--scale", type=float, default=1.0, help="multiply every threshold (clipped to 1)")
    skp.set_defaults(func=_cmd_skip)
    _add_families(sub)
    return parser


def _add_families(sub) -> None:
    fam = _sub(sub, "families", "check every MoE model type of the installed transformers (tiny models)")
    fam.add_argument("--types", nargs="*", default=None, help="only these model types (default: every MoE type)")
    fam.add_argument("--write", action="store_true",
                     help="publish the matrix: workbench/families/coverage.csv and docs/supported_models.md")
    fam.add_argument("--no-pruning", action="store_true", help="skip the pruned-checkpoint check (faster)")
    fam.add_argument("--quiet", action="store_true", help="no progress bar")
    fam.set_defaults(func=_cmd_families)


#: How each command writes ``--out``: a folder, a file, or a store (which has rules of its own).
OUT_KIND = {"demo": "folder", "report": "folder", "steer": "folder", "contrast": "folder", "prune": "folder",
            "skip": "folder", "analyse": "folder", "embed": "file", "sql": "file", "record": "store"}
INPUTS = ("model", "texts", "a", "b", "tasks", "embedder", "reference", "traces")


def claim_out(args) -> None:
    """Refuse an ``--out`` that is a foreign non-empty folder, an existing file, or one of the inputs."""
    from workbench.outputs import check_not_input, claim_file, claim_folder

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


def user_errors() -> tuple[type, ...]:
    """The exceptions that mean a wrong input or setting (printed as one line), not a bug."""
    from workbench.export import ChromiumNotFoundError
    from workbench.store.files import StoreBusyError

    # ValueError covers the library's own (UnsupportedModelError, StoreError, TraceMismatchError, ...);
    # OSError: missing or unreadable files and folders, hub errors; MemoryError: a refused materialisation;
    # NotImplementedError: a setting the workbench refuses (vLLM's data_parallel_size > 1, enable_eplb).
    return (ValueError, TypeError, KeyError, OSError, ImportError, MemoryError, NotImplementedError,
            StoreBusyError, ChromiumNotFoundError)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (a KeyError's without the quotes repr adds)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = " ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    return text or type(err).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {one_line(message) if isinstance(message, BaseException) else message}",
          file=sys.stderr if file is None else file)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # one line each, without the source line
            claim_out(args)
            code = args.func(args)
        if code == 0 and OUT_KIND.get(args.command) == "folder" and getattr(args, "out", None):
            from workbench.outputs import mark_folder
            mark_folder(args.out, args.command)
        return code
    except KeyboardInterrupt:
        if args.traceback:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except user_errors() as err:
        if args.traceback:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
