"""Which query terms a passage contains, so the page can show and mark them."""
from __future__ import annotations

import re

WORD = re.compile(r"\w+", re.UNICODE)

STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through to too under until up very was we
were what when where which while who whom why will with would you your yours yourself yourselves
""".split())


def query_terms(query: str) -> list[str]:
    """The query's content words, lower-cased, in order, without duplicates or stopwords."""
    seen: dict[str, None] = {}
    for word in WORD.findall(query.lower()):
        if word not in STOPWORDS and (len(word) > 1 or word.isdigit()):
            seen.setdefault(word, None)
    return list(seen)


def _same_word(term: str, word: str) -> bool:
    """Exact match, or a plural/singular pair (``index`` / ``indexes``), enough for display."""
    if term == word:
        return True
    for suffix in ("s", "es"):
        if word == term + suffix or term == word + suffix:
            return True
    return False


def matched_terms(query: str, text: str) -> list[str]:
    """The query terms that occur in the text as whole words (case-insensitive)."""
    words = set(WORD.findall(text.lower()))
    return [t for t in query_terms(query) if any(_same_word(t, w) for w in words if w[:2] == t[:2])]
