"""Short excerpts of a passage around the query's words, with those words marked."""
from __future__ import annotations

import re
from typing import Callable

from rag.stopwords import STOP_WORDS


def query_terms(query: str) -> list[str]:
    """Lower-case query words worth marking (stop words dropped unless nothing else is left)."""
    words = [w.lower() for w in re.findall(r"\w+", query)]
    kept = [w for w in words if w not in STOP_WORDS and len(w) > 1] or words
    return list(dict.fromkeys(kept))


def stem(word: str) -> str:
    """A crude prefix stem so 'encoding' marks 'encoder' and 'encodes' (the keyword index stems too)."""
    return word if len(word) <= 4 else word[: max(4, len(word) - 3)]


def term_spans(text: str, query: str) -> list[tuple[int, int]]:
    """(start, end) of every word in text that shares a stem with a query word."""
    stems = [stem(t) for t in query_terms(query)]
    if not stems:
        return []
    return [m.span() for m in re.finditer(r"\w+", text) if any(m.group().lower().startswith(s) for s in stems)]


def snippet(text: str, query: str, width: int = 280, mark: Callable[[str], str] = lambda w: f"**{w}**") -> str:
    """About ``width`` characters of ``text`` around the densest run of query words, words marked."""
    text = " ".join(text.split())
    spans = term_spans(text, query)
    start = 0
    if spans and len(text) > width:
        best = max(range(len(spans)), key=lambda i: sum(1 for s in spans[i:] if s[0] < spans[i][0] + width))
        start = max(0, spans[best][0] - width // 5)
        space = text.rfind(" ", 0, start)
        start = space + 1 if start and space >= 0 else start
    end = min(len(text), start + width)
    if end < len(text):
        space = text.rfind(" ", start, end)
        end = space if space > start else end
    out, pos = [], start
    for a, b in spans:
        if a < start or b > end:
            continue
        out += [text[pos:a], mark(text[a:b])]
        pos = b
    out.append(text[pos:end])
    return ("…" if start else "") + "".join(out) + ("…" if end < len(text) else "")
