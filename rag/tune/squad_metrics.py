"""SQuAD's official answer scoring (v1.1 evaluation script): normalize, then best exact match / token F1.

Normalization: lower case, drop punctuation, drop the articles a/an/the, collapse white space. Used
by `rag tune` (validation) and `rag eval answer`.
"""
from __future__ import annotations

import collections
import re
import string

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """The official SQuAD normalization: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: list[str]) -> float:
    """1.0 when the normalized prediction equals a normalized gold answer."""
    normal = normalize_answer(prediction)
    return float(any(normal == normalize_answer(a) for a in answers))


def f1_score(prediction: str, answers: list[str]) -> float:
    """The best token F1 (bag of normalized tokens) over the gold answers."""
    predicted = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold = normalize_answer(answer).split()
        common = collections.Counter(predicted) & collections.Counter(gold)
        same = sum(common.values())
        if same:
            precision, recall = same / len(predicted), same / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
        elif not predicted and not gold:
            best = max(best, 1.0)
    return best


def contains(prediction: str, answers: list[str]) -> float:
    """1.0 when a normalized gold answer occurs in the normalized prediction (on word boundaries)."""
    normal = f" {normalize_answer(prediction)} "
    return float(any(f" {normalize_answer(a)} " in normal for a in answers if normalize_answer(a)))
