"""What each ``python -m workbench`` command does (the parser and ``main`` are in :mod:`workbench.cli`).

Each ``_cmd_*`` takes the parsed arguments and returns the exit status; user errors are raised and
printed in one line by :func:`workbench.cli.main`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from workbench.jsonl import check_file, read_texts

# -- helpers -------------------------------------------------------------------------------
@contextlib.contextmanager
def stage(desc: str, quiet: bool = False):
    """A one-step progress bar around a step that has no finer progress of its own (it shows the time)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=1, desc=desc, disable=quiet, bar_format="{desc}: {elapsed}{postfix}")
    try:
        yield bar
    except BaseException:
        bar.leave = False  # a terminal shows the error alone
        raise
    else:
        bar.update(1)
    finally:
        bar.close()


def load_model(args, **options):
    """``wb.load`` of ``--model`` with the command's device and remote-code settings, under a progress bar."""
    import workbench as wb
    from workbench.loading import load_config, resolve_source

    # a wrong path, an unknown hub id or a dense model is refused in one line, before any progress bar
    load_config(*resolve_source(args.model), getattr(args, "trust_remote_code", False))
    kwargs = {"trust_remote_code": getattr(args, "trust_remote_code", False)}
    if getattr(args, "device", None) is not None:
        kwargs["device"] = args.device
    kwargs.update(options)
    with stage(f"loading model {args.model}", getattr(args, "quiet", False)):
        return wb.load(args.model, **kwargs)


def _preset(args):
    """``--preset``: None for the workbench default, else the paper preset's name."""
    return None if args.preset in (None, "workbench") else args.preset


def _on_cpu(device) -> bool:
    return device is None or str(device).startswith("cpu")


# -- commands ------------------------------------------------------------------------------
def _cmd_record(args) -> int:
    import workbench as wb

    texts, labels = read_texts(args.texts)  # a bad file is refused before the model loads
    if args.backend == "vllm":
        engine_args = {"tensor_parallel_size": args.tensor_parallel_size,
                       "pipeline_parallel_size": args.pipeline_parallel_size}
        if args.max_model_len is not None:
            engine_args["max_model_len"] = args.max_model_len
        with stage(f"starting vLLM engine for {args.model}", args.quiet):
            lm = wb.load(args.model, backend="vllm", trust_remote_code=args.trust_remote_code, **engine_args)
    else:
        lm = load_model(args)
    trace = wb.record(lm, texts, labels=labels, batch_size=args.batch_size, max_length=args.max_length,
                      scores=args.scores, out=args.out, progress=not args.quiet)
    print(f"{trace!r}\nwritten to {args.out}")
    return 0


def _cmd_analyse(args) -> int:
    import workbench as wb
    from workbench.report import analyse, save_tables

    trace = wb.open_trace(args.traces)
    print(repr(trace))
    tables = analyse(trace, progress=not args.quiet)
    for path, frame in zip(save_tables(tables, args.out), tables.values()):
        print(f"written: {path}  ({len(frame)} rows)")
    return 0


def _cmd_sql(args) -> int:
    import workbench as wb

    with stage("query", args.quiet):
        frame = wb.open_trace(args.traces).sql(args.query).df()
    if args.out:
        frame.to_csv(args.out, index=False, lineterminator="\n")
        print(f"written: {args.out} ({len(frame)} rows)")
    else:
        print(frame.to_string(index=False, max_rows=args.max_rows))
    return 0


def _cmd_info(args) -> int:
    lm = load_model(args)
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


def _cmd_report(args) -> int:
    from workbench.report import run_report

    run_report(Path(args.out), source=args.model, texts=args.texts, sample=args.sample, max_length=args.max_length,
               device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
               progress=not args.quiet, force=args.force)
    return 0


def _cmd_steer(args) -> int:
    from workbench.steering.pipeline import steer_sets
    from workbench.steering.prompts import read_jsonl_texts

    hint = 'a .jsonl file, one {"text": ...} a line'
    a_texts = [r["text"] for r in read_jsonl_texts(check_file(args.a, hint))]
    b_texts = [r["text"] for r in read_jsonl_texts(check_file(args.b, hint))]
    lm = load_model(args)
    contrast, experiment = steer_sets(
        lm, a_texts, b_texts, top=args.top, out=args.out, prompt_tokens=args.prompt_tokens or None,
        seeds=range(args.seeds), mode=args.mode, on_weight=args.weight, max_new_tokens=args.max_new_tokens,
        measure=args.measure, permutations=args.permutations, figures=args.figures, progress=not args.quiet,
        preset=args.preset, activate=args.activate)
    print("\n".join(experiment.report_lines()))
    out = Path(args.out)
    print(f"wrote {out / 'experts.csv'}, {out / 'experiment.csv'}, {out / 'summary.csv'} and "
          f"{out / 'continuations.csv'} (columns ending _a / _b: of set A / set B)")
    return 0


#: ``--stop`` / ``--max-new-tokens`` when not given: one-line answers (the demo's sums) end at the
#: newline after a few tokens; worked solutions (GSM8K's "... #### 42") at a blank line.
SHORT_STOP, LONG_STOP, LONG_TOKENS = ["\n"], ["\n\n"], 256


def task_settings(lm, tasks, stop=None, max_new_tokens=None) -> tuple[list[str] | None, int, str]:
    """``(stop, max_new_tokens, why)`` for a task list: the given ones, else what its answers need.

    One-line answers: stop at the newline, at most the longest answer's tokens (with the space
    before it) plus 2 (the newline after it, one spare), and at least 6 (the notebook's setting on the demo's
    sums). Multi-line answers (worked solutions ending in ``#### N``): stop at a blank line, 256 tokens.
    """
    from workbench.contrast.evaluate import gold_answer

    long = any("\n" in str(t["answer"]).strip() or "####" in str(t["answer"]) for t in tasks)
    why = "worked solutions" if long else "one-line answers"
    if stop is None:
        stop = list(LONG_STOP if long else SHORT_STOP)
    if max_new_tokens is None:
        if long:
            max_new_tokens = LONG_TOKENS
        else:
            longest = max(len(lm.tokenizer(" " + gold_answer(t["answer"]), add_special_tokens=False)["input_ids"])
                          for t in tasks)
            max_new_tokens = max(6, longest + 2)
    return stop or None, int(max_new_tokens), why


def _cmd_contrast(args) -> int:
    import codecs

    import torch

    from workbench.contrast.evaluate import GREEDY, demo_tasks, evaluate, read_tasks, scmoe

    if args.tasks != "demo":
        check_file(args.tasks, 'a .jsonl file, one {"prompt": ..., "answer": ...} a line, or "demo"')
    tasks = demo_tasks() if args.tasks == "demo" else read_tasks(args.tasks)
    if args.sample is not None and args.sample < 1:
        raise ValueError(f"--sample must be at least 1, got {args.sample}")
    tasks = tasks[: args.sample]
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    lm = load_model(args)
    stop = None if args.stop is None else [codecs.decode(s, "unicode_escape") for s in args.stop]
    stop, max_new_tokens, why = task_settings(lm, tasks, [] if args.no_stop else stop, args.max_new_tokens)
    threads = torch.get_num_threads()
    if args.threads and _on_cpu(args.device):
        torch.set_num_threads(args.threads)  # timings: intra-op threads on a busy CPU spin and wait
    print(f"{len(tasks)} tasks ({'the demo sums' if args.tasks == 'demo' else args.tasks}, {why}): stop at "
          f"{', '.join(repr(s) for s in stop) if stop else 'EOS or the token limit only'}, at most {max_new_tokens} "
          f"new tokens; {torch.get_num_threads()} CPU thread(s); timing after a warm-up decode")
    try:
        result = evaluate(lm, tasks, [GREEDY, scmoe(args.beta, args.alpha, args.weak)],
                          max_new_tokens=max_new_tokens, stop=stop, bos=False if args.no_bos else None,
                          eos=args.eos, preset=_preset(args), progress=not args.quiet)
    finally:
        torch.set_num_threads(threads)
    result.save(args.out)
    print(result.summary().to_string(index=False))
    print(f"wrote {Path(args.out) / 'outputs.jsonl'} and {Path(args.out) / 'summary.csv'}")
    return 0


def _cmd_embed(args) -> int:
    """Write MoEE embeddings of a text file as an [N, D] float32 .npy (input order).

    concat standardises HS and RW with statistics fitted on the input texts themselves, or on
    --reference texts when given, or taken from a saved --embedder folder; with --preset moee every
    batch of 64 input texts is standardised on its own, as the reference code does.
    """
    from workbench.embeddings import MoEEmbedder
    from workbench.embeddings.export import embed_to_file

    texts, _ = read_texts(args.texts)
    reference = read_texts(args.reference)[0] if args.reference else None
    lm = load_model(args)
    if args.embedder:
        emb = MoEEmbedder.load(args.embedder, lm)
    else:
        layers = [int(x) for x in args.layers.split(",")] if args.layers else None
        emb = MoEEmbedder(lm, template=args.template, unit=args.unit, layers=layers,
                          alpha=1.0 if args.alpha is None else args.alpha, batch_size=args.batch_size,
                          max_length=args.max_length, preset=_preset(args))
    matrix = embed_to_file(emb, texts, args.kind, args.out, alpha=args.alpha, reference=reference,
                           progress=not args.quiet)
    print(f"{emb.describe()}\nwrote {matrix.shape[0]}x{matrix.shape[1]} float32 ({args.kind}) to {args.out}")
    return 0


def _calibration(args):
    """The model and calibration texts of the ``prune`` and ``skip`` commands (texts first: a bad
    file is refused before the model loads)."""
    from workbench.pruning.jobs import calibration_texts

    texts = calibration_texts(args.texts, per_domain=args.per_domain, sample=args.sample, seed=args.seed)
    return load_model(args), texts


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
