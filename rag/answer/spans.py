"""Answer spans without a generator: the shortest phrase of an evidence sentence that fits the question.

Candidates are the runs of words in the best-ranked sentences that do not repeat the question
(SQuAD answers almost never do) and do not cross punctuation. Each scores by its sentence's
evidence score, whether it fits the expected answer type (a number for "how many", a year or date
for "when", a capitalised name for "who"/"where"), how close it sits to the question's words in
the sentence (the answer is usually next to them) and its length (gold answers are short).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from rag.answer.evidence import (
    FULL_MONTHS, STOP_WORDS, Sentence, answer_type, code_end, is_code, is_date_word, is_number_word,
    question_stems, stem,
)

TOKEN = re.compile(r"[$£€]?\w+(?:[.,'’–\-/]\w+)*%?")
MAX_WORDS = 6
JOINERS = {"of", "de", "the", "and", "van", "von", "da", "du", "la", "le", "del", "for", "&"}
# Weights of the span score; set by hand on SQuAD dev's first three articles (Super Bowl 50,
# Warsaw, ... see eval/answer_bench.py) and left alone for the rest.
W_SENTENCE = 1.0
W_TYPE = 0.6
W_NEAR = 0.35
W_LENGTH = 0.05
W_CAPITAL = 0.1
W_CODE = 0.5  # the question's own word written as code in the passage ("an empty set" -> "set()")
W_AGENT = 0.4  # "who" answered by the agent of a passive verb: "founded by the cartographer Ilsa Marrow"


@dataclass
class Span:
    text: str
    sentence: Sentence
    start: int  # character offsets into the sentence's passage text
    end: int
    score: float


def _words(sentence: Sentence) -> list[tuple[str, int, int]]:
    return [(m.group(0), sentence.start + m.start(), sentence.start + m.end())
            for m in TOKEN.finditer(sentence.text)]


def _type_fit(kind: str, words: list[str]) -> float:
    if kind == "number":
        return 1.0 if is_number_word(words[0]) else (0.5 if any(is_number_word(w) for w in words) else -0.5)
    if kind == "date":
        return 1.0 if any(is_date_word(w) and (w[:1].isdigit() or w.lower() in FULL_MONTHS) for w in words) else -0.5
    if kind in ("person", "place"):
        capitals = [w[:1].isupper() for w in words if w.lower() not in JOINERS]
        return 1.0 if capitals and all(capitals) else -0.5
    # "what"/"which"/"why": any phrase; numbers and names slightly less likely than for typed questions
    return 0.0


def candidate_spans(question: str, sentences: list[Sentence], text_of) -> list[Span]:
    """Every scored candidate span of ``sentences``; ``text_of(sentence)`` gives its passage text."""
    kind = answer_type(question)
    asked = question_stems(question)
    spans: list[Span] = []
    for sentence in sentences:
        words = _words(sentence)
        passage = text_of(sentence)
        echoes = [stem(w) in asked or w.lower() in asked for w, _, _ in words]
        code = [is_code(passage, a, b) for _, a, b in words]
        in_question = [echo and not coded for echo, coded in zip(echoes, code)]
        anchors = [i for i, hit in enumerate(in_question) if hit and words[i][0].lower() not in STOP_WORDS]
        for i in range(len(words)):
            if in_question[i] or words[i][0].lower() in STOP_WORDS:
                continue
            for j in range(i, min(len(words), i + MAX_WORDS)):
                if in_question[j]:
                    break
                if j > i and re.search(r"[,;:()\"]|\s[-–]\s", passage[words[j - 1][2]:words[j][1]]):
                    break  # punctuation between two words ends the phrase
                last = words[j][0].lower()
                if last in STOP_WORDS or last in JOINERS:
                    continue
                tokens = [w for w, _, _ in words[i:j + 1]]
                near = min((min(abs(a - i), abs(a - j)) for a in anchors), default=10)
                capital = sum(w[:1].isupper() for w in tokens) / len(tokens)
                agent = kind == "person" and "by" in [w.lower() for w, _, _ in words[max(0, i - 3):i]]
                score = (W_SENTENCE * sentence.score + W_TYPE * _type_fit(kind, tokens)
                         - W_NEAR * min(near, 10) / 10 * 3 - W_LENGTH * abs(len(tokens) - 2)
                         + W_CAPITAL * capital * (kind == "other") + W_AGENT * agent
                         + W_CODE * (echoes[i] and code[i]))
                end = code_end(passage, words[j][2])
                spans.append(Span(text=passage[words[i][1]:end], sentence=sentence,
                                  start=words[i][1], end=end, score=score))
    spans.sort(key=lambda s: -s.score)
    return spans
