"""Command line: ``python -m workbench <command> ...``.

Commands:
    record  record a text file's routing into a trace folder.
    demo    the main job: record the demo model's held-out corpus and write a report folder.
    info    print what the workbench knows about a model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_texts(path) -> tuple[list[str], list | None]:
    """Texts (and labels) from a ``.txt`` file (one text a line) or ``.jsonl`` (``text``, ``label``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix == ".jsonl":
        texts, labels = [], []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from None
            if "text" not in obj:
                raise ValueError(f"{path}:{n}: each JSONL line needs a 'text' field")
            texts.append(obj["text"])
            labels.append(obj.get("label"))
        return texts, labels if any(x is not None for x in labels) else None
    texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return texts, None


def _cmd_record(args) -> int:
    import workbench as wb

    lm = wb.load(args.model, trust_remote_code=args.trust_remote_code, device=args.device)
    texts, labels = read_texts(args.texts)
    trace = wb.record(lm, texts, labels=labels, batch_size=args.batch_size, max_length=args.max_length,
                      scores=args.scores, out=args.out, progress=not args.quiet)
    print(f"{trace!r}\nwritten to {args.out}")
    return 0


def _cmd_info(args) -> int:
    import workbench as wb

    lm = wb.load(args.model, trust_remote_code=args.trust_remote_code)
    print(repr(lm))
    return 0


def _cmd_demo(args) -> int:
    from workbench.report import run_demo

    run_demo(Path(args.out), source=args.model, sample=args.sample, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    rec = sub.add_parser("record", help="record routing of texts into a trace folder")
    rec.add_argument("--model", required=True, help='"demo", a checkpoint folder, or a hub id')
    rec.add_argument("--texts", required=True, help=".txt (one text a line) or .jsonl (text, label)")
    rec.add_argument("--out", required=True, help="trace folder (resumes if interrupted)")
    rec.add_argument("--batch-size", type=int, default=8)
    rec.add_argument("--max-length", type=int, default=None)
    rec.add_argument("--scores", action="store_true", help="also keep full router logits")
    rec.add_argument("--device", default=None)
    rec.add_argument("--trust-remote-code", action="store_true")
    rec.add_argument("--quiet", action="store_true")
    rec.set_defaults(func=_cmd_record)

    info = sub.add_parser("info", help="describe a model's MoE structure")
    info.add_argument("--model", default="demo")
    info.add_argument("--trust-remote-code", action="store_true")
    info.set_defaults(func=_cmd_info)

    demo = sub.add_parser("demo", help="the main job: record the demo corpus and write a report")
    demo.add_argument("--out", default="report")
    demo.add_argument("--model", default="demo")
    demo.add_argument("--sample", type=int, default=None, help="documents to record (default: all)")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
