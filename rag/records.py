"""Data classes for what flows between pipeline steps (store -> search -> readers -> CLI/web)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SourceDocument:
    """A document's text before it is stored: what loaders produce and ingestion consumes."""

    uri: str  # file path, "stdin", or a caller-chosen key such as "scifact:1234"
    title: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    mtime: float | None = None
    # where a person finds a passage again (rag.ingest.locations): character offset at which each page
    # starts (PDF; page n at index n - 1), and (offset, text) of each heading (HTML, Markdown)
    page_starts: list[int] = field(default_factory=list)
    headings: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Document:
    id: int
    path: str
    title: str
    collection: str = "default"
    content_hash: str = ""
    size: int = 0
    mtime: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    ingested_at: str = ""

    def to_json(self) -> dict:
        return {"id": self.id, "path": self.path, "title": self.title}


@dataclass
class Passage:
    id: int
    document_id: int
    order: int
    text: str
    start: int  # character offsets into the document's text
    end: int
    page: int | None = None  # PDF page (1-based) the passage starts on; None for other formats
    last_page: int | None = None  # page it ends on
    heading: str | None = None  # the heading it sits under (HTML, Markdown)

    def location_json(self) -> dict:
        return {"page": self.page, "last_page": self.last_page, "heading": self.heading}


@dataclass
class Hit:
    """One ranked search result."""

    passage: Passage
    document: Document
    score: float
    rank: int

    def to_json(self) -> dict:
        return {
            "rank": self.rank,
            "score": float(self.score),
            "passage_id": self.passage.id,
            "text": self.passage.text,
            "document": self.document.to_json(),
            **self.passage.location_json(),
        }


@dataclass
class Citation:
    n: int  # the [n] the reader wrote, 1-based position in the passages it was given
    hit: Hit

    def to_json(self) -> dict:
        return {"n": self.n, "passage_id": self.hit.passage.id, "document": self.hit.document.to_json(),
                **self.hit.passage.location_json()}


@dataclass
class Answer:
    question: str
    text: str
    citations: list[Citation]
    passages: list[Hit]
    hyde: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # the sentence of the first cited passage that holds the answer: {"text", "answer_start", "answer_end"
    # (offsets of the answer in that text), "passage_start", "n", "passage_id"}; None for a refusal
    sentence: dict | None = None

    def to_json(self) -> dict:
        return {
            "question": self.question,
            "answer": self.text,
            "sentence": dict(self.sentence) if self.sentence else None,
            "citations": [c.to_json() for c in self.citations],
            "passages": [h.to_json() for h in self.passages],
            "hyde": list(self.hyde),
            "timings": dict(self.timings),
        }
