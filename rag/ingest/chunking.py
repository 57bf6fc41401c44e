"""Split a document into passages that fit the encoder's window, keeping character offsets.

Passages are packed from sentences (only an over-long sentence is cut into runs of tokens) and
end at the strongest break that keeps them at least half full: a page end (PDF), else a paragraph
end (blank line), else a line end, else a sentence end. Consecutive passages share about
``overlap`` tokens of whole sentences, so a thought cut at a boundary is still seen whole once -
except across a page end, so that a passage cut there cites one page, not two.
Every passage is checked against the real tokenizer: it never exceeds ``max_tokens``.
"""
from __future__ import annotations

import re
from bisect import bisect_right

Span = tuple[int, int]

_PARAGRAPH = re.compile(r"\n\s*\n")
_LINE = re.compile(r"\n")
_SENTENCE = re.compile(r"(?<=[.!?;:])\s+")


def _split(text: str, start: int, end: int, pattern: re.Pattern) -> list[Span]:
    """Non-blank pieces of text[start:end] between matches of pattern, trimmed of whitespace."""
    pieces, pos = [], start
    for m in pattern.finditer(text, start, end):
        pieces.append((pos, m.start()))
        pos = m.end()
    pieces.append((pos, end))
    return [s for s in (_trim(text, a, b) for a, b in pieces) if s]


def _trim(text: str, start: int, end: int) -> Span | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


class Chunker:
    """Token-budgeted chunking with one tokenizer (the encoder's)."""

    def __init__(self, tokenizer, max_tokens: int, overlap: int = 0):
        if max_tokens < 8:
            raise ValueError(f"chunk size must be at least 8 tokens, got {max_tokens}")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.overlap = max(0, min(overlap, max_tokens // 2))

    def count(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]

    def units(self, text: str, page_starts: list[int] | None = None) -> list[tuple[Span, int, int]]:
        """Sentences (cut further into token windows when too long) as (span, tokens, strength),
        strength being the break that follows: 3 page, 2 paragraph, 1 line, 0 sentence or less."""
        pieces: list[tuple[Span, int]] = []
        for paragraph in _split(text, 0, len(text), _PARAGRAPH):
            lines = _split(text, paragraph[0], paragraph[1], _LINE)
            for li, line in enumerate(lines):
                sentences = _split(text, line[0], line[1], _SENTENCE)
                for si, sentence in enumerate(sentences):
                    last_sentence = si == len(sentences) - 1
                    strength = (2 if li == len(lines) - 1 else 1) if last_sentence else 0
                    pieces.append((sentence, strength))
        counts = self.count([text[a:b] for (a, b), _ in pieces])
        out: list[tuple[Span, int, int]] = []
        for (span, strength), n in zip(pieces, counts):
            if n <= self.max_tokens:
                out.append((span, n, strength))
            else:
                windows = self._token_windows(text, span)
                out += [(w, m, strength if i == len(windows) - 1 else 0) for i, (w, m) in enumerate(windows)]
        if page_starts:  # a unit followed by the start of a page ends that page
            for n in range(len(out) - 1):
                (_, end), tokens, _ = out[n]
                after = bisect_right(page_starts, end)
                if after < len(page_starts) and page_starts[after] <= out[n + 1][0][0]:
                    out[n] = (out[n][0], tokens, 3)
        return out

    def _token_windows(self, text: str, span: Span) -> list[tuple[Span, int]]:
        """A unit with no natural break that fits: cut it every max_tokens tokens."""
        enc = self.tokenizer(text[span[0]:span[1]], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = enc["offset_mapping"]
        out = []
        for i in range(0, len(offsets), self.max_tokens):
            window = offsets[i:i + self.max_tokens]
            piece = _trim(text, span[0] + window[0][0], span[0] + window[-1][1])
            if piece:
                out.append((piece, len(window)))
        return out

    def chunk(self, text: str, page_starts: list[int] | None = None) -> list[Span]:
        """(start, end) character offsets of each passage, in order; ``page_starts`` (offsets where
        PDF pages start) makes page ends the preferred cuts."""
        units = self.units(text, page_starts)
        spans: list[Span] = []
        i = 0
        while i < len(units):
            j, total = i, 0
            while j < len(units) and total + units[j][1] <= self.max_tokens:
                total += units[j][1]
                j += 1
            j = max(j, i + 1)
            if j < len(units):
                j = self._best_cut(units, i, j)
            spans.append((units[i][0][0], units[j - 1][0][1]))
            if j >= len(units):
                break
            if units[j - 1][2] == 3:  # cut at a page end: the next passage starts on the new page
                i = j
                continue
            # start the next passage a few whole sentences back (about `overlap` tokens), always moving
            # on, never back over a page end
            back, carried = j, 0
            while back - 1 > i and carried + units[back - 1][1] <= self.overlap and units[back - 1][2] != 3:
                back -= 1
                carried += units[back][1]
            i = back
        return self._enforce(text, spans)

    def _best_cut(self, units, i: int, j: int) -> int:
        """End the passage after the strongest break in units[i:j] that keeps it at least half full."""
        half = self.max_tokens // 2
        for strength in (3, 2, 1):
            total, best = 0, None
            for m in range(i, j):
                total += units[m][1]
                if units[m][2] >= strength and total >= half:
                    best = m + 1
            if best:
                return best
        return j

    def _enforce(self, text: str, spans: list[Span]) -> list[Span]:
        """Re-count whole passages (joining units can merge tokens) and cut any that overflow."""
        counts = self.count([text[a:b] for a, b in spans])
        out = []
        for span, n in zip(spans, counts):
            if n <= self.max_tokens:
                out.append(span)
            else:
                out += [s for s, _ in self._token_windows(text, span)]
        return out

def chunk(text: str, tokenizer, max_tokens: int, overlap: int = 0, page_starts: list[int] | None = None
          ) -> list[Span]:
    """Passages of ``text`` as (start, end) character offsets, each at most ``max_tokens`` tokens."""
    return Chunker(tokenizer, max_tokens, overlap).chunk(text, page_starts)


MAX_PASSAGE_CHARS = 4000  # a 256-token window of ordinary text is ~1,200 characters


def cap_spans(text: str, spans: list[Span], most: int = MAX_PASSAGE_CHARS) -> list[Span]:
    """Split any span longer than ``most`` characters: the tokenizer reads a 5 MB run without spaces
    as one unknown token and never cuts it, but a passage must stay a passage."""
    out: list[Span] = []
    for start, end in spans:
        while end - start > most:
            cut = start + most
            space = text.rfind(" ", start + most // 2, cut)  # prefer a word boundary in the second half
            cut = space if space > start else cut
            out.append((start, cut))
            start = cut + (text[cut:cut + 1] == " ")
        if end > start:
            out.append((start, end))
    return out
