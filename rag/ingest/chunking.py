"""Split a document into passages that fit the encoder's window, keeping character offsets.

A passage never crosses a section start (a heading: HTML h1-h6, Markdown, a PDF's outline): each
section is chunked on its own, so a short section is a passage of its own and every passage lies
under one heading. Nor does it cross a PDF page end, unless a sentence runs on over it (the next page
goes on in lower case): then the page end is no break at all. Within those, passages are packed from
sentences (only an over-long sentence is cut into runs of tokens) and end at the strongest break that
keeps them at least half full: a paragraph end (blank line), else a sentence end; failing that, at
their last sentence end however short that leaves them, so a passage ends mid-sentence only when one
sentence alone overflows it; only where no sentence ends (code, lists) at a line end that breaks no
sentence. A line end is not a sentence end: extracted HTML keeps its source's line wrapping.
Consecutive passages share about ``overlap`` tokens of whole sentences (or lines), so a thought cut at
a boundary is still seen whole once - except across a page end, so that a passage cut there cites
one page, not two.
Every passage is checked against the real tokenizer: it never exceeds ``max_tokens``.
"""
from __future__ import annotations

import re
from bisect import bisect_right

Span = tuple[int, int]

_PARAGRAPH = re.compile(r"\n\s*\n")
_LINE = re.compile(r"\n")
_SENTENCE = re.compile(r"(?<=[.!?;:])\s+")
# a sentence ends with . ! ? (or an ellipsis), then maybe closing quotes or brackets
_SENTENCE_END = re.compile(r"[.!?\u2026][\"')\]\u2019\u201d\u00bb]*$")
_MARK = re.compile(r"(\d+|[^\W\d_])(\.\d+)*\.")  # "5.1." before a section's name, "a." before a list item

# The break that follows a unit, strongest first.
PAGE, PARAGRAPH, SENTENCE, LINE, NONE = 4, 3, 2, 1, 0


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


def ends_sentence(piece: str, following: str | None, line_end: bool = True) -> bool:
    """Whether ``piece`` ends a sentence: it ends with . ! or ?, what follows does not go on in lower
    case (as after "e.g."), and it is not a number or list mark before text on its line ("5.1. Sets")."""
    return (_SENTENCE_END.search(piece) is not None and not (following and following[0].islower())
            and (line_end or _MARK.fullmatch(piece) is None))


def _clean_line_end(line: str, following: str | None) -> bool:
    """A line end that breaks no sentence: the line closes a clause (: or ;), or the next line starts
    with neither a letter nor an opening bracket or quote (code, a list mark, a number); a wrapped
    line of prose goes on with a word, or "(see below)"."""
    return (line.endswith((":", ";")) or not following
            or not (following[0].isalpha() or following[0] in "([{\"'\u2018\u201c"))


def section_ranges(length: int, section_starts: list[int] | None) -> list[Span]:
    """(start, end) of each section of a text ``length`` characters long that starts at the given offsets."""
    bounds = sorted({0, length, *(s for s in section_starts or () if 0 < s < length)})
    return list(zip(bounds, bounds[1:]))


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

    def units(self, text: str, page_starts: list[int] | None = None, start: int = 0, end: int | None = None
              ) -> list[tuple[Span, int, int]]:
        """Sentences of text[start:end] (cut further into token windows when too long) as (span, tokens,
        strength), strength being the break that follows: PAGE, PARAGRAPH, SENTENCE, LINE or NONE."""
        end = len(text) if end is None else end
        pieces: list[tuple[Span, bool, bool]] = []  # (span, ends a line, ends a paragraph)
        for paragraph in _split(text, start, end, _PARAGRAPH):
            lines = _split(text, paragraph[0], paragraph[1], _LINE)
            for li, line in enumerate(lines):
                sentences = _split(text, line[0], line[1], _SENTENCE)
                for si, sentence in enumerate(sentences):
                    last = si == len(sentences) - 1
                    pieces.append((sentence, last, last and li == len(lines) - 1))
        strengths = []
        for n, ((a, b), line_end, paragraph_end) in enumerate(pieces):
            following = text[pieces[n + 1][0][0]:pieces[n + 1][0][1]] if n + 1 < len(pieces) else None
            if paragraph_end:
                strengths.append(PARAGRAPH)
            elif ends_sentence(text[a:b], following, line_end):
                strengths.append(SENTENCE)
            elif line_end and _clean_line_end(text[a:b], following):
                strengths.append(LINE)
            else:
                strengths.append(NONE)
        counts = self.count([text[a:b] for (a, b), _, _ in pieces])
        out: list[tuple[Span, int, int]] = []
        for (span, _, _), strength, n in zip(pieces, strengths, counts):
            if n <= self.max_tokens:
                out.append((span, n, strength))
            else:
                windows = self._token_windows(text, span)
                out += [(w, m, strength if i == len(windows) - 1 else NONE) for i, (w, m) in enumerate(windows)]
        if page_starts:  # a unit followed by the start of a page ends that page, unless its sentence goes on
            for n in range(len(out) - 1):
                (unit_start, unit_end), tokens, _ = out[n]
                after = bisect_right(page_starts, unit_end)
                if after < len(page_starts) and page_starts[after] <= out[n + 1][0][0]:
                    following = text[out[n + 1][0][0]:out[n + 1][0][1]]
                    if not following[0].islower():
                        strength = PAGE
                    else:  # the blank line that joins the pages is no paragraph end
                        strength = LINE if _clean_line_end(text[unit_start:unit_end], following) else NONE
                    out[n] = (out[n][0], tokens, strength)
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

    def chunk(self, text: str, page_starts: list[int] | None = None, section_starts: list[int] | None = None
              ) -> list[Span]:
        """(start, end) character offsets of each passage, in order; ``page_starts`` (offsets where
        PDF pages start) and ``section_starts`` (offsets where headings start) are cuts no passage
        crosses (a page end only where no sentence runs on over it)."""
        spans: list[Span] = []
        for start, end in section_ranges(len(text), section_starts):
            spans += self._pack(self.units(text, page_starts, start, end))
        return self._enforce(text, spans)

    def _pack(self, units: list[tuple[Span, int, int]]) -> list[Span]:
        """Passages of one section's units."""
        spans: list[Span] = []
        i = done = 0  # units[:done] are in a passage already: the next one must end past them
        while i < len(units):
            j, total = i, 0
            while j < len(units) and total + units[j][1] <= self.max_tokens:
                total += units[j][1]
                j += 1
                if units[j - 1][2] == PAGE:
                    break
            j = max(j, i + 1)
            if j < len(units) and units[j - 1][2] != PAGE:
                j = self._best_cut(units, i, j, max(done, i))
            spans.append((units[i][0][0], units[j - 1][0][1]))
            done = j
            if j >= len(units):
                break
            # the next passage starts on the new page after a page end, else a little back
            i = j if units[j - 1][2] == PAGE else self._overlap_start(units, i, j)
        return spans

    def _overlap_start(self, units, i: int, j: int) -> int:
        """Where the passage after units[i:j] starts: a few whole sentences (or lines) back, about
        ``overlap`` tokens, never back over a page end, and only as far back as still leaves room for
        the sentence that starts at units[j]."""
        ahead = 0
        for unit in units[j:]:
            ahead += unit[1]
            if unit[2] >= SENTENCE:
                break
        if ahead > self.max_tokens:  # that sentence overflows a passage anyway: room for its first unit
            ahead = units[j][1]
        back, carried, start = j, 0, j
        while back - 1 > i and carried + units[back - 1][1] <= self.overlap and units[back - 1][2] != PAGE:
            back -= 1
            carried += units[back][1]
            if units[back - 1][2] >= LINE and carried + ahead <= self.max_tokens:
                start = back
        return start

    def _best_cut(self, units, i: int, j: int, after: int) -> int:
        """End the passage units[i:j] after the strongest break that keeps it at least half full, else
        after its last sentence end, else after its last line end that breaks no sentence (half full
        if it can), else after units[j - 1]; never before units[after] (the previous passage's end)."""
        half = self.max_tokens // 2
        for strength, least in ((PARAGRAPH, half), (SENTENCE, half), (SENTENCE, 0), (LINE, half), (LINE, 0)):
            total, best = 0, None
            for m in range(i, j):
                total += units[m][1]
                if m >= after and units[m][2] >= strength and total >= least:
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

def chunk(text: str, tokenizer, max_tokens: int, overlap: int = 0, page_starts: list[int] | None = None,
          section_starts: list[int] | None = None) -> list[Span]:
    """Passages of ``text`` as (start, end) character offsets, each at most ``max_tokens`` tokens,
    none crossing a section start."""
    return Chunker(tokenizer, max_tokens, overlap).chunk(text, page_starts, section_starts)


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
