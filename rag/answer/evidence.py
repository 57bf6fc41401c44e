"""Evidence: the sentences of the retrieved passages, ranked by how well they answer the question.

Readers answer from a few sentences rather than whole passages: over SQuAD dev paragraphs the best
sentence by this ranking holds the gold answer for 69% of questions and the top three for 84%
(hybrid top-5 passages), so span choice, not retrieval, decides answer quality, and a short
context keeps a small generator fast and on topic. A sentence scores by its embedding's cosine
with the question, plus the share of the question's content words it contains, plus its passage's
cosine with the question, minus a little per retrieval rank of its passage.

The passage's cosine raised the share of questions whose top two sentences hold the answer from
0.763 to 0.773 on 300 SQuAD dev questions (none of those `rag eval answer --limit 150` asks) and
changed no Python-docs answer. Counting question words found in the document's title helped SQuAD
more (0.81: a Wikipedia sentence says "It", not its article's subject), but it flattens the
differences between a page's sentences and cost Python-docs answers, so it is not used.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from rag.records import Hit
from rag.stopwords import STOP_WORDS

# A sentence ends at . ! or ? (optionally closed by a quote or bracket) followed by white space and
# an upper-case letter, digit, quote or bracket; "e.g. the" and "3.5" stay inside one sentence.
SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(\[])")
WORD = re.compile(r"\w+")
LEXICAL_WEIGHT = 0.5  # weight of the question-word share against the cosine (both 0..1)
PASSAGE_WEIGHT = 1.0  # weight of the sentence's passage's cosine with the question
ENCODED_SENTENCES = 10  # sentences encoded per question: the best by word share alone (encoding is the cost)
RANK_PENALTY = 0.02  # per retrieval rank of the sentence's passage


@dataclass
class Sentence:
    """One sentence of a retrieved passage: ``n`` is its passage's 1-based position among the hits."""

    n: int
    text: str
    start: int  # character offsets into the passage text
    end: int
    score: float = 0.0


def stem(word: str) -> str:
    """A crude suffix strip, enough to match "represented" with "represent" and "games" with "game"."""
    word = word.lower()
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > 4 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_stems(text: str) -> set[str]:
    return {stem(w) for w in WORD.findall(text.lower()) if w not in STOP_WORDS}


def question_stems(question: str) -> set[str]:
    """Every word of the question, stemmed (stop words too): what an answer should not repeat."""
    return {stem(w) for w in WORD.findall(question.lower())}


CALL = re.compile(r"\(\)|\[\]|\{\}")


def code_end(text: str, end: int) -> int:
    """``end`` moved past an empty call or literal written right after a word ("set" -> "set()")."""
    match = CALL.match(text, end)
    return match.end() if match else end


def is_code(text: str, start: int, end: int) -> bool:
    """A word written as code ("set()", "os.path", "max_size"): it names a thing, so an answer may
    repeat it even when the question uses the plain word ("How do you create an empty set?")."""
    return code_end(text, end) > end or "_" in text[start:end] or text[start - 1:start] == "."


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of the sentences of ``text``, white space trimmed."""
    spans, start = [], 0
    for match in SENTENCE_END.finditer(text):
        spans.append((start, match.start() + len(match.group(0).rstrip())))  # keep a closing quote
        start = match.end()
    spans.append((start, len(text)))
    out = []
    for a, b in spans:
        segment = text[a:b]
        a += len(segment) - len(segment.lstrip())
        b -= len(segment) - len(segment.rstrip())
        if b > a:
            out.append((a, b))
    return out


def answer_in_context(passage: str, answer: str, span: tuple[int, int] | None = None) -> dict | None:
    """The sentence (or sentences) of ``passage`` that hold the answer, with the answer's offsets in it.

    ``span``: the answer's offsets in the passage where the reader knows them; otherwise its first
    occurrence. None when the passage does not hold the answer verbatim.
    """
    if span is None:
        at = passage.find(answer) if answer else -1
        if at < 0:
            return None
        span = (at, at + len(answer))
    start, end = span
    first = last = None
    for a, b in split_sentences(passage):
        if first is None and b > start:
            first = a
        if a < end:
            last = b
    first = start if first is None or first > start else first
    last = end if last is None or last < end else last
    return {"text": passage[first:last], "answer_start": start - first, "answer_end": end - first,
            "passage_start": first}


def sentences_of(hits: list[Hit]) -> list[Sentence]:
    return [Sentence(n=n, text=hit.passage.text[a:b], start=a, end=b)
            for n, hit in enumerate(hits, 1) for a, b in split_sentences(hit.passage.text)]


def rank_sentences(question: str, hits: list[Hit], encoder, question_vector: np.ndarray | None = None,
                   passage_scores: list[float] | None = None) -> list[Sentence]:
    """Every sentence of ``hits``, best first (see the module docstring for the score).

    ``passage_scores``: each hit's cosine with the question (rag.answer.pipeline.relevance); 0 when not given.
    """
    sentences = sentences_of(hits)
    if not sentences:
        return []
    asked = content_stems(question)
    # everything but the sentence's own cosine: word share, passage cosine, retrieval rank
    known = [LEXICAL_WEIGHT * (len(asked & content_stems(s.text)) / len(asked) if asked else 0.0)
             + (PASSAGE_WEIGHT * passage_scores[s.n - 1] if passage_scores else 0.0)
             - RANK_PENALTY * (s.n - 1) for s in sentences]
    for sentence, score in zip(sentences, known):  # a first ranking without the encoder
        sentence.score = score - 1.0
    # Only the best few are encoded: the encoder costs ~20 ms a sentence on one core, and the top
    # sentence by word share alone is already the best one 97% as often as the combined score.
    shortlist = sorted(range(len(sentences)), key=lambda i: -sentences[i].score)[:ENCODED_SENTENCES]
    if question_vector is None:
        question_vector = encoder.encode([question])[0]
    cosine = encoder.encode([sentences[i].text for i in shortlist]) @ question_vector
    for i, cos in zip(shortlist, cosine.tolist()):
        sentences[i].score = float(cos + known[i])
    order = np.argsort([-s.score for s in sentences], kind="stable")
    return [sentences[i] for i in order]


# --- answer types ---------------------------------------------------------------------------------

MONTHS = ("january february march april may june july august september october november december "
          "jan feb mar apr jun jul aug sep sept oct nov dec").split()
# Month names that are never another word ("may" is a verb too): a span holding one is a date.
FULL_MONTHS = tuple(m for m in MONTHS[:12] if m != "may")
NUMBER_WORDS = set("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                   "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety "
                   "hundred thousand million billion trillion dozen half several".split())
_TYPES = [
    ("date", re.compile(r"^(when\b|(in |by |since |until )?(what|which) (year|years|date|day|month|century|decade|"
                        r"era|period|time)\b|how long ago\b)")),
    ("number", re.compile(r"^(how (many|much|long|old|far|large|big|tall|high|wide|deep|often|fast)\b|"
                          r"(what|which) (percentage|percent|number|amount|proportion|size|population|"
                          r"distance|temperature|age|speed|price|cost|length|weight|height)\b)")),
    ("person", re.compile(r"^(who|whom|whose)\b|^(what|which) (person|man|woman|people|king|queen|president|"
                          r"author|artist|scientist|player|leader|team|company|group|organization|band)\b")),
    ("place", re.compile(r"^where\b|^(in |at |from )?(what|which) (city|country|state|town|place|region|"
                         r"continent|county|province|island|river|location|area|nation|street)\b")),
]


def answer_type(question: str) -> str:
    """A coarse expected answer type from the question's opening: date, number, person, place or other.

    The wh-word is looked for at the start, or after a leading clause ("In 1990, who ..."), so
    "The French church was built when?" is a date question too.
    """
    text = " ".join(WORD.findall(question.lower()))
    for kind, pattern in _TYPES:
        if pattern.search(text):
            return kind
    for clause in re.split(r"[,;]\s*", question.lower()):
        words = " ".join(WORD.findall(clause))
        for kind, pattern in _TYPES:
            if pattern.search(words):
                return kind
    last = WORD.findall(question.lower())[-1:] or [""]
    if last[0] == "when":
        return "date"
    return "other"


def is_number_word(word: str) -> bool:
    clean = word.lower().strip(".,;:()'\"")
    return bool(re.match(r"^[\d$£€][\d.,%]*", clean)) or clean in NUMBER_WORDS


def is_date_word(word: str) -> bool:
    clean = word.lower().strip(".,;:()'\"")
    return bool(re.match(r"^\d{1,4}(s|th|st|nd|rd)?$", clean)) or clean in MONTHS


def fits_type(kind: str, first_word: str) -> bool:
    """Whether an answer starting with ``first_word`` can be of the expected type."""
    if kind == "number":
        return is_number_word(first_word)
    if kind == "date":
        return is_date_word(first_word) or first_word.lower() in ("the", "early", "late", "mid", "in")
    if kind in ("person", "place"):
        return first_word[:1].isupper()
    return True
