"""Exact-match evaluation of greedy and SCMoE decoding on a task file, timed in the same run.

A task file is JSONL with a ``prompt`` and an ``answer`` per line. Answers are compared the way
GSM8K is scored: the number after ``#### `` if the output has one, else the last number in the
output (commas and a leading ``$`` removed; ``82.0`` equals ``82``). Methods are run interleaved,
task by task, with the order rotated from task to task, so that their timings share the same
machine conditions.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.contrast.evaluate import evaluate
    >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
    >>> tasks = [{"prompt": "12 + 34 =", "answer": "46"}, {"prompt": "20 + 30 =", "answer": "50"}]
    >>> result = evaluate(lm, tasks, max_new_tokens=3, progress=False)
    >>> list(result.summary()[["method", "n"]].itertuples(index=False, name=None))
    [('greedy', 2), ('scmoe', 2)]
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from workbench.contrast.decode import generate, generate_greedy

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_HASHES = re.compile(r"####\s*(-?\$?\d[\d,]*(?:\.\d+)?)")


def normalize_number(text: str) -> str:
    """``'$1,234.50'`` -> ``'1234.5'``; ``'82.0'`` -> ``'82'``; other text is only stripped."""
    s = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(s)
    except ValueError:
        return text.strip()
    return str(int(value)) if value.is_integer() else repr(value)


def extract_answer(text: str) -> str | None:
    """The answer in a model output: the number after ``####``, else the last number, else None.

    Example:
        >>> extract_answer("She pays 3 * 4 = 12 dollars.\\n#### 12"), extract_answer(" 82\\n")
        ('12', '82')
        >>> extract_answer("no digits here") is None
        True
    """
    found = _HASHES.findall(text)
    if found:
        return normalize_number(found[-1])
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def gold_answer(answer) -> str:
    """The reference answer, normalised (a GSM8K solution's ``#### N`` is reduced to ``N``)."""
    text = str(answer)
    found = _HASHES.findall(text)
    return normalize_number(found[-1] if found else text)


def read_tasks(path) -> list[dict]:
    """Tasks from a JSONL file with ``prompt`` and ``answer`` on every line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    tasks = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict) or "prompt" not in obj or "answer" not in obj:
            raise ValueError(f"{path}:{n}: each line needs a 'prompt' and an 'answer' field")
        tasks.append({"prompt": str(obj["prompt"]), "answer": str(obj["answer"])})
    if not tasks:
        raise ValueError(f"{path} holds no tasks")
    return tasks


def demo_tasks(n: int | None = None) -> list[dict]:
    """The demo's held-out sums (``arith_heldout.jsonl``; rebuilt from the reserved problems when the
    file is not installed), first ``n`` of them."""
    from workbench.demo import DATA_DIR

    path = DATA_DIR / "arith_heldout.jsonl"
    if path.is_file():
        tasks = read_tasks(path)
    else:
        from workbench.demo.synthetic import heldout_problems

        tasks = [{"prompt": f"{a} + {b} =", "answer": str(a + b)} for a, b in heldout_problems()]
    return tasks[:n] if n is not None else tasks


@dataclass(frozen=True)
class Method:
    """A decoding method of an evaluation: ``"greedy"`` or SCMoE with its parameters."""

    name: str
    beta: float | None = None
    alpha: float | None = None
    weak: object = None

    def run(self, lm, prompt: str, **decode):
        if self.beta is None:
            return generate_greedy(lm, prompt, **decode)
        return generate(lm, prompt, beta=self.beta, alpha=self.alpha, weak=self.weak, **decode)


GREEDY = Method("greedy")


def scmoe(beta: float = 0.5, alpha: float = 0.1, weak="rank2", name: str | None = None) -> Method:
    """An SCMoE method; named ``"scmoe"`` unless ``name`` is given."""
    return Method(name or "scmoe", float(beta), float(alpha), weak)


def grid(betas=(0.25, 0.5, 1.0), weaks=("rank2", "top1", "random"), alpha: float = 0.1) -> list[Method]:
    """Greedy plus SCMoE for every ``beta`` x weak routing, named ``"scmoe b=0.5 rank2"`` etc."""
    return [GREEDY] + [scmoe(b, alpha, w, name=f"scmoe b={b:g} {w}") for w in weaks for b in betas]


@dataclass
class ContrastEval:
    """Outputs and scores of an evaluation.

    Attributes:
        outputs: one row per (task, method): ``task, method, prompt, answer, output, extracted,
            correct, tokens, seconds, stop_reason``.
        methods: the methods, in order.
    """

    outputs: pd.DataFrame
    methods: list[Method] = field(default_factory=list)

    def summary(self) -> pd.DataFrame:
        """One row per method: ``method, weak, alpha, beta, accuracy, n, tokens, ms_per_token``."""
        rows = []
        for m in self.methods:
            part = self.outputs[self.outputs.method == m.name]
            tokens = int(part.tokens.sum())
            rows.append({"method": m.name, "weak": None if m.beta is None else str(m.weak),
                         "alpha": m.alpha, "beta": m.beta, "accuracy": float(part.correct.mean()),
                         "n": len(part), "tokens": tokens,
                         "ms_per_token": 1000.0 * float(part.seconds.sum()) / max(1, tokens)})
        return pd.DataFrame(rows)

    def compare(self, baseline: str = "greedy") -> pd.DataFrame:
        """Paired comparison of every method with ``baseline`` on the same tasks.

        Returns:
            One row per other method: ``fixed`` (tasks right only with the method), ``broken`` (right
            only with the baseline), ``delta`` (accuracy difference) and ``se`` (its paired standard
            error, ``sqrt(fixed + broken - n * delta^2) / n``), so a difference can be read against noise.
        """
        pivot = self.outputs.pivot(index="task", columns="method", values="correct").astype(bool)
        if baseline not in pivot:
            raise ValueError(f"baseline {baseline!r} is not among the methods {list(pivot.columns)}")
        rows, n = [], len(pivot)
        for m in self.methods:
            if m.name == baseline:
                continue
            fixed = int((pivot[m.name] & ~pivot[baseline]).sum())
            broken = int((~pivot[m.name] & pivot[baseline]).sum())
            delta = (fixed - broken) / n
            se = max(fixed + broken - n * delta ** 2, 0.0) ** 0.5 / n
            rows.append({"method": m.name, "fixed": fixed, "broken": broken, "delta": delta, "se": se})
        return pd.DataFrame(rows, columns=["method", "fixed", "broken", "delta", "se"])

    def save(self, out) -> Path:
        """Write ``outputs.jsonl`` (one line per task and method) and ``summary.csv`` into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.outputs.to_json(out / "outputs.jsonl", orient="records", lines=True, force_ascii=False)
        self.summary().to_csv(out / "summary.csv", index=False)
        return out


def evaluate(lm, tasks, methods=None, *, max_new_tokens: int = 64, stop=None, progress: bool = True,
             warmup: bool = True, **decode) -> ContrastEval:
    """Exact-match accuracy and ms per token of each method on ``tasks``.

    Args:
        lm: a :class:`~workbench.loading.MoEModel` with a tokenizer.
        tasks: list of ``{"prompt", "answer"}`` dicts, or a path to a JSONL task file.
        methods: :class:`Method` list (default: ``[GREEDY, scmoe()]``; see :func:`grid`).
        max_new_tokens: most tokens per output.
        stop: stop string(s), e.g. ``"\\n"`` for one-line answers.
        progress: show a progress bar.
        warmup: decode the first prompt once with every method before timing.
        **decode: passed to the decoders (``sample``, ``seed``, ``bos``, ``eos``, ``preset="scmoe"``: the
            reference code's prompt tokens and EOS ban, see :mod:`workbench.contrast.presets`).

    Returns:
        A :class:`ContrastEval`.
    """
    if isinstance(tasks, (str, Path)):
        tasks = read_tasks(tasks)
    if not tasks:
        raise ValueError("no tasks to evaluate")
    methods = list(methods) if methods is not None else [GREEDY, scmoe()]
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    kwargs = dict(max_new_tokens=max_new_tokens, stop=stop, **decode)
    if warmup:
        for m in methods:
            m.run(lm, tasks[0]["prompt"], **dict(kwargs, max_new_tokens=2))
    rows = []
    for i, task in enumerate(tqdm(tasks, desc="tasks", disable=not progress)):
        gold = gold_answer(task["answer"])
        for j in range(len(methods)):
            m = methods[(i + j) % len(methods)]
            g = m.run(lm, task["prompt"], **kwargs)
            pred = extract_answer(g.text)
            rows.append({"task": i, "method": m.name, "prompt": task["prompt"], "answer": task["answer"],
                         "output": g.text, "extracted": pred, "correct": pred == gold,
                         "tokens": g.num_tokens, "seconds": g.seconds, "stop_reason": g.stop_reason})
    outputs = pd.DataFrame(rows).sort_values(["task", "method"], key=lambda s: s.map(
        {n: k for k, n in enumerate(names)}) if s.name == "method" else s, kind="stable").reset_index(drop=True)
    return ContrastEval(outputs, methods)
