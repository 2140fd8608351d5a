"""Behaviour scores on generated text: is this continuation German? code? like set A?

A behaviour is any callable ``text -> bool`` (or a float in ``[0, 1]``, read as a hit when
``>= 0.5``). Built-ins fit the demo model's domains:

* ``"english"``, ``"german"``, ``"french"``, ``"spanish"``, ``"italian"`` — the language with the
  most stop-word hits (:func:`detect_language`);
* ``"code"`` / ``"prose"`` — symbol and keyword density (:func:`code_score`);
* :class:`NgramClassifier` — a character n-gram naive-Bayes classifier fitted on example texts;
  :func:`set_behaviour` turns it into "looks like set A rather than set B" (the CLI's default).

Example:
    >>> from workbench.steering.behaviour import detect_language, resolve_behaviour, set_behaviour
    >>> detect_language("Der Hund ist nicht in dem Haus und die Katze auch nicht.")
    'german'
    >>> resolve_behaviour("code")("def f(x):\\n    return x[0] + 1")
    True
    >>> like_a = set_behaviour(["Der Hund schläft.", "Die Katze ist hier."], ["The dog sleeps.", "The cat is here."])
    >>> like_a("Das ist die Katze."), like_a("This is the cat.")
    (True, False)
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

STOPWORDS = {
    "english": "the and of to is in that it was for on are with as his they be at this have from or had "
               "not but what all were when we there can an your which their said if will each about how "
               "up out them then she many some so these would other into has more her two like him see",
    "german": "der die und in den von zu das mit sich des auf für ist im dem nicht ein eine als auch es "
              "an werden aus er hat dass sie nach wird bei einer um am sind noch wie einem über einen so "
              "zum war haben nur oder aber vor zur bis mehr durch man sein wurde sei ich wir",
    "french": "le la les de des et est un une du en que qui dans pour pas au sur se ce il elle ne plus par "
              "avec sont mais ou nous vous ils cette aux son sa ses été être fait comme tout leur lui on",
    "spanish": "el la los las de del y en que un una es por con para no se su al lo como más pero sus le "
               "ya o este sí porque esta entre cuando muy sin sobre también me hasta hay donde quien desde "
               "todo nos durante todos uno les ni contra otros ese eso ante ellos",
    "italian": "il lo la i gli le di da in con su per tra fra che e è un una uno non del della dei delle "
               "al alla nel nella sono come anche ma più questo questa se si ci ha hanno era essere molto "
               "quando ancora dopo tutto loro sua suo",
}
LANGUAGES = tuple(STOPWORDS)
_WORDS = {lang: set(words.split()) for lang, words in STOPWORDS.items()}
_SHARE = Counter(w for words in _WORDS.values() for w in words)
_WORD_RE = re.compile(r"[^\W\d_]+", re.UNICODE)
_CODE_WORDS = set("def return import class elif self print lambda function const let var void int "
                  "public static null None True False #include std printf func fn struct".split())
_CODE_CHARS = set("{}()[];=<>_#*/\\|&!+-:\"'`")


def language_scores(text: str) -> dict[str, float]:
    """Stop-word hits per language; a word shared by ``m`` languages counts ``1/m`` to each."""
    scores = dict.fromkeys(LANGUAGES, 0.0)
    for word in _WORD_RE.findall(text.lower()):
        for lang in LANGUAGES:
            if word in _WORDS[lang]:
                scores[lang] += 1.0 / _SHARE[word]
    return scores


def detect_language(text: str, min_hits: float = 1.0) -> str | None:
    """The language with most stop-word hits, or None (fewer than ``min_hits``, or a tie)."""
    scores = language_scores(text)
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    if ranked[0][1] < min_hits or ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]


def code_score(text: str) -> float:
    """How code-like ``text`` is, in ``[0, 1]``: symbol density plus keyword density."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    symbols = sum(c in _CODE_CHARS for c in chars) / len(chars)
    words = re.findall(r"[#A-Za-z_]+", text)
    keywords = sum(w in _CODE_WORDS for w in words) / max(len(words), 1)
    indented = any(line.startswith(("    ", "\t")) for line in text.splitlines())
    return float(min(1.0, 2.5 * symbols + 2.0 * keywords + 0.15 * indented))


def is_code(text: str, threshold: float = 0.35) -> bool:
    """``code_score(text) >= threshold``."""
    return code_score(text) >= threshold


class LanguageIs:
    """Behaviour: the continuation is in ``language`` (stop-word vote)."""

    def __init__(self, language: str):
        if language not in LANGUAGES:
            raise ValueError(f"unknown language {language!r}; known: {', '.join(LANGUAGES)}")
        self.language = language
        self.__name__ = f"language is {language}"

    def __call__(self, text: str) -> bool:
        return detect_language(text) == self.language


def _is_prose(text: str) -> bool:
    return bool(text.strip()) and not is_code(text)


_is_prose.__name__ = "prose"
BEHAVIOURS: dict[str, Callable[[str], bool]] = {**{lang: LanguageIs(lang) for lang in LANGUAGES},
                                                "code": is_code, "prose": _is_prose}


def resolve_behaviour(behaviour) -> Callable[[str], bool]:
    """A callable from a built-in name or a callable."""
    if callable(behaviour):
        return behaviour
    if isinstance(behaviour, str) and behaviour in BEHAVIOURS:
        return BEHAVIOURS[behaviour]
    raise ValueError(f"unknown behaviour {behaviour!r}: give a callable text -> bool or one of "
                     f"{', '.join(BEHAVIOURS)}")


def behaviour_name(behaviour) -> str:
    return behaviour if isinstance(behaviour, str) else getattr(behaviour, "__name__", repr(behaviour))


def _normalise(text: str) -> str:
    return " " + re.sub(r"\s+", " ", text.lower()).strip() + " "


class NgramClassifier:
    """Multinomial naive Bayes over character n-grams (a light language/style identifier).

    Args:
        n: n-gram sizes ``1..n``.
        alpha: additive smoothing.

    Example:
        >>> clf = NgramClassifier().fit(["der die das", "und ist nicht"], ["de", "de"])
        Traceback (most recent call last):
        ...
        ValueError: NgramClassifier needs at least two classes, got ['de']
    """

    def __init__(self, n: int = 4, alpha: float = 0.5):
        self.n, self.alpha = int(n), float(alpha)
        self.classes_: list = []

    def _grams(self, text: str) -> Counter:
        s = _normalise(text)
        return Counter(s[i:i + m] for m in range(1, self.n + 1) for i in range(len(s) - m + 1))

    def fit(self, texts: Sequence[str], labels: Sequence) -> NgramClassifier:
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        self.classes_ = sorted(set(labels), key=str)
        if len(self.classes_) < 2:
            raise ValueError(f"NgramClassifier needs at least two classes, got {self.classes_}")
        counts = {c: Counter() for c in self.classes_}
        for text, label in zip(texts, labels):
            counts[label].update(self._grams(text))
        vocab = set().union(*counts.values())
        self._log_prob = {}
        for c in self.classes_:
            total = sum(counts[c].values()) + self.alpha * len(vocab)
            self._log_prob[c] = {g: math.log((counts[c][g] + self.alpha) / total) for g in vocab}
            self._log_prob[c][None] = math.log(self.alpha / total)
        docs = Counter(labels)
        self._log_prior = {c: math.log(docs[c] / len(labels)) for c in self.classes_}
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """``[N, C]`` class probabilities (columns in :attr:`classes_` order)."""
        if not self.classes_:
            raise ValueError("fit the classifier first")
        out = np.zeros((len(texts), len(self.classes_)))
        for i, text in enumerate(texts):
            grams = {g: m for g, m in self._grams(text).items() if g in self._log_prob[self.classes_[0]]}
            logits = np.array([self._log_prior[c] + sum(m * self._log_prob[c][g] for g, m in grams.items())
                               for c in self.classes_])
            logits -= logits.max()
            out[i] = np.exp(logits) / np.exp(logits).sum()
        return out

    def predict(self, texts: Sequence[str]) -> list:
        return [self.classes_[j] for j in self.predict_proba(texts).argmax(axis=1)]


class SetBehaviour:
    """Behaviour: ``text`` looks more like set A than set B (an :class:`NgramClassifier`)."""

    def __init__(self, a_texts: Sequence[str], b_texts: Sequence[str], name: str = "looks like set A", **options):
        if not a_texts or not b_texts:
            raise ValueError("set_behaviour needs example texts of both sets")
        self.classifier = NgramClassifier(**options).fit(list(a_texts) + list(b_texts),
                                                         ["a"] * len(a_texts) + ["b"] * len(b_texts))
        self.__name__ = name

    def probability(self, text: str) -> float:
        return float(self.classifier.predict_proba([text])[0, 0])

    def __call__(self, text: str) -> bool:
        return bool(text.strip()) and self.probability(text) > 0.5


def set_behaviour(a_texts: Sequence[str], b_texts: Sequence[str], name: str = "looks like set A",
                  **options) -> SetBehaviour:
    """A behaviour that is True when a text is classified as set A (empty text: False)."""
    return SetBehaviour(a_texts, b_texts, name=name, **options)
