"""Train the demo tokenizer: byte-level BPE with digits split one by one.

Run ``python -m workbench.demo.tokenizer --corpus workbench/demo/_work/corpus --out DIR``. The
result is a Hugging Face fast tokenizer (``tokenizer.json`` + ``tokenizer_config.json``) with
``<|bos|>``, ``<|eos|>`` and ``<|pad|>``; ``AutoTokenizer.from_pretrained(DIR)`` loads it offline.
The tokenizer adds no special tokens on its own: documents in training are ``<|bos|> text <|eos|>``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = [PAD, BOS, EOS]
DEFAULT_VOCAB = 6144


def _texts(corpus_dir: Path) -> Iterator[str]:
    with open(corpus_dir / "train.jsonl", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def build_bpe(texts, vocab_size: int = DEFAULT_VOCAB) -> Tokenizer:
    """Train a byte-level BPE ``tokenizers.Tokenizer`` whose pre-tokenizer isolates every digit.

    Args:
        texts: Iterable of training strings.
        vocab_size: Target vocabulary size, special tokens included.

    Example:
        >>> tok = build_bpe(["12 + 34 = 46", "hello world"] * 20, vocab_size=300)
        >>> tok.encode("123").tokens
        ['1', '2', '3']
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def to_hf(tok: Tokenizer):
    """Wrap a ``tokenizers.Tokenizer`` as a transformers fast tokenizer with bos/eos/pad set.

    Example:
        >>> hf = to_hf(build_bpe(["a b c"] * 10, vocab_size=280))
        >>> hf.eos_token, hf.pad_token_id
        ('<|eos|>', 0)
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        model_max_length=4096, clean_up_tokenization_spaces=False)


def train_tokenizer(corpus_dir: Path | str, out: Path | str, vocab_size: int = DEFAULT_VOCAB):
    """Train on ``corpus_dir/train.jsonl`` and save the Hugging Face tokenizer to ``out``.

    Returns:
        The saved ``PreTrainedTokenizerFast``.
    """
    hf = to_hf(build_bpe(_texts(Path(corpus_dir)), vocab_size))
    Path(out).mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    return hf


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m workbench.demo.tokenizer --corpus DIR --out DIR``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB)
    args = p.parse_args(argv)
    hf = train_tokenizer(args.corpus, args.out, args.vocab_size)
    print(f"vocab {len(hf)} -> {args.out}")


if __name__ == "__main__":
    main()
