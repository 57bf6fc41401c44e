"""Where a passage sits in its source: the PDF page it starts on (and ends on) and the heading above it.

Loaders record where each page starts and where each heading stands, as character offsets into the
document's text; ingestion maps each passage's offsets onto them, so a citation can say "p. 12" or
name the section a person should open. Headings also start sections, which no passage crosses
(rag.ingest.chunking), so a passage's heading is the heading of every sentence in it.
"""
from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass

Span = tuple[int, int]

# ATX headings (# to ######) and setext headings (a text line underlined with === or ---).
_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.M)
_SETEXT = re.compile(r"^(?P<text>[^\n]*\S[^\n]*)\n {0,3}(?:=+|-+)[ \t]*$", re.M)
_FENCE = re.compile(r"^ {0,3}(```|~~~)", re.M)


@dataclass
class Location:
    """A passage's place in its source; None where the format does not say."""

    page: int | None = None  # 1-based page its first character is on
    last_page: int | None = None  # page its last character is on
    heading: str | None = None  # nearest heading at or before its start


def page_at(offset: int, page_starts: list[int]) -> int | None:
    """The 1-based page holding ``offset``; page n starts at page_starts[n - 1] (an empty page
    shares its start with the next page, so the later, non-empty one wins)."""
    if not page_starts:
        return None
    return max(1, bisect_right(page_starts, offset))


def heading_at(offset: int, headings: list[tuple[int, str]]) -> str | None:
    """The text of the last heading starting at or before ``offset`` (headings sorted by offset)."""
    i = bisect_right(headings, offset, key=lambda h: h[0])
    return headings[i - 1][1] if i else None


def locate(spans: list[Span], page_starts: list[int], headings: list[tuple[int, str]]) -> list[Location]:
    """One Location per passage span; empty when the source records neither pages nor headings."""
    if not page_starts and not headings:
        return []
    headings = sorted(headings, key=lambda h: h[0])  # stable: of two headings at one offset, the later wins
    return [Location(page=page_at(start, page_starts), last_page=page_at(max(start, end - 1), page_starts),
                     heading=heading_at(start, headings)) for start, end in spans]


def location_label(page: int | None, last_page: int | None = None, heading: str | None = None) -> str:
    """What a person reads beside a citation: 'p. 12', 'pp. 12-13', '§ Installing', or both; '' when unknown."""
    parts = []
    if page is not None:
        parts.append(f"pp. {page}\u2013{last_page}" if last_page and last_page != page else f"p. {page}")
    if heading:
        parts.append(f"\u00a7 {heading}")
    return " \u00b7 ".join(parts)


def markdown_headings(text: str) -> list[tuple[int, str]]:
    """(offset, text) of the headings (`#` to `######`, and setext) outside code fences."""
    fenced: list[Span] = []
    marks = [m.start() for m in _FENCE.finditer(text)]
    for opening, closing in zip(marks[::2], marks[1::2] + [len(text)] * (len(marks) % 2)):
        fenced.append((opening, closing))

    def in_fence(offset: int) -> bool:
        return any(a <= offset <= b for a, b in fenced)

    found = [(m.start(), m.group(2).strip()) for m in _ATX.finditer(text)]
    for m in _SETEXT.finditer(text):
        line = m.group("text").strip()
        # a setext heading needs a blank line (or the start) above it; a list item or quote is not one
        starts_block = m.start() == 0 or text[m.start() - 2:m.start()] == "\n\n"
        if starts_block and not re.match(r"([-*+>]|\d+[.)])\s", line):
            found.append((m.start(), line))
    return sorted((offset, heading) for offset, heading in found if heading and not in_fence(offset))


def heading_lines(text: str, headings: list[str]) -> list[tuple[int, str]]:
    """(offset, text) of the lines of ``text`` that read exactly as one of ``headings`` (HTML h1-h6
    texts); runs of whitespace compare equal, so the extractor's spacing does not matter."""
    wanted = {" ".join(h.split()) for h in headings}
    wanted.discard("")
    found, pos = [], 0
    for line in text.split("\n"):
        key = " ".join(line.split())
        if key in wanted:
            found.append((pos + len(line) - len(line.lstrip()), key))
        pos += len(line) + 1
    return found


def outline_headings(entries: list[tuple[int, str]], text: str, page_starts: list[int]) -> list[tuple[int, str]]:
    """(offset, title) of a PDF's outline entries, given as (0-based page, title) in outline order: at
    the line of that page that reads as the title, else (the title is drawn, not written, or worded
    differently) at the page's start."""
    found: list[tuple[int, str]] = []
    searched_from: dict[int, int] = {}  # page -> where the next title on it is looked for
    for page, title in entries:
        title = " ".join(str(title).split())
        if not title or not 0 <= page < len(page_starts):
            continue
        start = page_starts[page]
        end = page_starts[page + 1] if page + 1 < len(page_starts) else len(text)
        origin = searched_from.get(page, start)
        match = heading_lines(text[origin:end], [title])
        if match:
            offset = origin + match[0][0]
            line_end = text.find("\n", offset, end)
            searched_from[page] = end if line_end < 0 else line_end
        else:
            offset = start
        found.append((offset, title))
    return sorted(found, key=lambda h: h[0])
