"""Do passages follow the documents' structure? ``rag eval headings FOLDER``.

A passage *crosses a heading* when one of its lines other than its first reads exactly (runs of
whitespace compare equal) as a heading of its document: for an HTML page the text of each h1-h6
element, read from the markup itself (not from the loader's list, so headings the loader missed
count too); for Markdown the loader's headings; for a PDF its outline titles. A heading on a
passage's first line is where a passage should start, and does not count. The share reported is
passages crossing at least one heading / all passages; ``headings inside`` counts each such line.

Passages are cut exactly as `rag ingest` cuts them (rag.ingest.pipeline.passage_spans, with the default
encoder's tokenizer, window and overlap, and the default excludes when walking the folder), but
nothing is encoded: only parsing and chunking, seconds for a folder of tens of pages.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class FileCrossings:
    path: str
    passages: int
    crossing: int  # passages with a heading line after their first line
    headings_inside: int  # such heading lines, summed over the passages


@dataclass
class HeadingsReport:
    folder: str
    files: int = 0
    passages: int = 0
    crossing: int = 0
    headings_inside: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    per_file: list[FileCrossings] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.crossing / self.passages if self.passages else 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "share": round(self.share, 4)}


def _key(line: str) -> str:
    return " ".join(line.split())


def heading_texts(path: Path, data: bytes, doc) -> set[str]:
    """The texts a line must read as to be a heading of ``doc``: h1-h6 of an HTML page's markup, else
    the loader's headings (Markdown, a PDF's outline)."""
    if path.suffix.lower() in (".html", ".htm", ".xhtml"):
        from lxml import html as lxml_html

        from rag.ingest.loaders import HEADING_TAGS

        try:
            tree = lxml_html.fromstring(data)
        except Exception:  # lxml raises several types for broken markup; the loader read it
            return {_key(h) for _, h in doc.headings}
        return {_key(h.text_content().replace("\u00b6", "")) for h in tree.iter(*HEADING_TAGS)} - {""}
    return {_key(h) for _, h in doc.headings} - {""}


def headings_inside(passage: str, headings: set[str]) -> int:
    """Lines of ``passage`` after its first that read as one of ``headings``."""
    return sum(_key(line) in headings for line in passage.split("\n")[1:])


def measure(folder: str | Path, chunk_tokens: int | None = None, overlap: int | None = None) -> HeadingsReport:
    """Passages crossing a heading in every file ``rag ingest FOLDER`` would read."""
    from types import SimpleNamespace

    from rag.models.encoders import load_tokenizer
    from rag.errors import RagError
    from rag.ingest.pipeline import DEFAULT_OVERLAP, find_files, passage_spans, text_window
    from rag.ingest.loaders import LoadError, load_bytes

    files, missing = find_files([str(folder)])
    if missing or not files:
        raise RagError(f"no documents to read under {folder}")
    tokenizer, max_tokens = load_tokenizer()
    window = text_window(SimpleNamespace(tokenizer=tokenizer, max_tokens=max_tokens))
    size = min(chunk_tokens or window, window)
    overlap = DEFAULT_OVERLAP if overlap is None else overlap
    report = HeadingsReport(folder=str(folder))
    started = time.perf_counter()
    for path in files:
        data = path.read_bytes()
        try:
            docs = load_bytes(str(path), data)
        except LoadError:
            report.failed.append(str(path))
            continue
        for doc in docs:
            if not doc.text.strip():
                continue
            headings = heading_texts(path, data, doc)
            counts = [headings_inside(doc.text[a:b], headings)
                      for a, b in passage_spans(doc, tokenizer, window, size, overlap)]
            result = FileCrossings(path=doc.uri, passages=len(counts), crossing=sum(n > 0 for n in counts),
                                   headings_inside=sum(counts))
            report.per_file.append(result)
            report.files += 1
            report.passages += result.passages
            report.crossing += result.crossing
            report.headings_inside += result.headings_inside
    report.seconds = time.perf_counter() - started
    return report


def format_table(report: HeadingsReport, worst: int = 5) -> str:
    lines = [f"{report.folder}: {report.files} documents, {report.passages:,} passages "
             f"({report.seconds:.1f} s, parsing and chunking only)",
             f"passages crossing a heading: {report.crossing:,} of {report.passages:,} = {report.share:.1%} "
             f"({report.headings_inside:,} heading lines inside passages)"]
    for item in sorted(report.per_file, key=lambda f: (-f.crossing, f.path))[:worst]:
        if item.crossing:
            lines.append(f"  {item.crossing:4d} of {item.passages:4d}  {item.path}")
    if report.failed:
        lines.append(f"unreadable: {len(report.failed)} ({', '.join(report.failed[:3])})")
    return "\n".join(lines)
