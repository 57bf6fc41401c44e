"""File formats -> SourceDocument records. One loader per format, chosen by file extension.

A loader gets the raw bytes and returns the documents in them (one for a text, HTML or PDF file;
one per record for JSON Lines, JSON and CSV). It raises LoadError with a reason a person can act on.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable

from rag.errors import RagError
from rag.ingest.locations import heading_lines, markdown_headings, outline_headings
from rag.records import SourceDocument


class LoadError(RagError):
    """This file cannot be ingested; the message says why."""


@dataclass
class LoadOptions:
    """How to read structured files: which fields hold the text, the id and the title."""

    text_field: str = "text"
    id_field: str | None = None
    title_field: str | None = "title"
    text_columns: list[str] = field(default_factory=list)  # CSV; empty = every column


# Single-byte Latin-script encodings a detector may confuse with one another.
LATIN_CODEPAGES = frozenset({
    "cp1250", "cp1252", "cp1254", "cp1257", "cp1258", "latin_1", "iso8859_2", "iso8859_3", "iso8859_4",
    "iso8859_9", "iso8859_10", "iso8859_13", "iso8859_14", "iso8859_15", "iso8859_16", "mac_latin2",
    "mac_roman", "mac_iceland", "mac_turkish", "cp437", "cp850", "cp852", "cp858", "cp1125",
})


def decode_text(data: bytes) -> str:
    """Bytes -> str: UTF-8 (with or without BOM), else the encoding charset_normalizer finds."""
    if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise LoadError("binary file (contains NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is None:
        raise LoadError("not text: no character encoding fits")
    if best.encoding in LATIN_CODEPAGES:
        # Between Latin code pages a guess on short text is a coin toss (it reads Latin-1 "naïve" as
        # cp1250 "naďve"); Western Latin-1 (as cp1252, its superset the web uses) is the common case.
        for encoding in ("cp1252", "latin_1"):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                continue
    return str(best)


def clean_text(text: str) -> str:
    """Normalise newlines and strip trailing spaces; keep paragraph breaks (they guide chunking)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = re.sub(r"[ \t\f\v]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _title_from_text(text: str, fallback: str) -> str:
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line[:200]
    return fallback


def load_text(path: str, data: bytes, options: LoadOptions) -> list[SourceDocument]:
    text = clean_text(decode_text(data))
    return [SourceDocument(uri=path, title=_title_from_text(text, Path(path).name), text=text)]


def load_markdown(path: str, data: bytes, options: LoadOptions) -> list[SourceDocument]:
    text = clean_text(decode_text(data))
    title = next((m.group(1).strip() for m in re.finditer(r"^#\s+(.+)$", text, re.M)), None)
    return [SourceDocument(uri=path, title=title or _title_from_text(text, Path(path).name), text=text,
                           headings=markdown_headings(text))]


# Never indexed: scripts and styles are not text, navigation and page chrome repeat on every page.
BOILERPLATE_TAGS = ("script", "style", "noscript", "template", "nav", "header", "footer")
HEADING_TAGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_BLOCK_TAGS = frozenset("p div br li ul ol dl dt dd h1 h2 h3 h4 h5 h6 tr table section article main pre "
                        "blockquote figure figcaption hr title".split())


class _BodyText(HTMLParser):
    """Text of an HTML page without its boilerplate elements, streamed (any nesting depth)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.in_head = False

    def handle_starttag(self, tag, attrs):
        if tag in BOILERPLATE_TAGS:
            self.skipping += 1
        elif tag == "head":
            self.in_head = True
        elif tag == "body":
            self.in_head = False
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in BOILERPLATE_TAGS and self.skipping:
            self.skipping -= 1
        elif tag == "head":
            self.in_head = False
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipping and not self.in_head:
            self.parts.append(data)


def html_body_text(markup: str) -> str:
    """The page's text minus BOILERPLATE_TAGS: the fallback when the main-text extractor gives up
    and for pages nested deeper than the tree parser goes."""
    parser = _BodyText()
    parser.feed(markup)
    parser.close()
    return re.sub(r"[ \t]*\n[ \t\n]*", "\n", "".join(parser.parts))


def load_html(path: str, data: bytes, options: LoadOptions) -> list[SourceDocument]:
    """Main content through trafilatura (drops boilerplate); title from <title>. Navigation, header,
    footer, script and style elements are removed first, so no path indexes them."""
    import trafilatura
    from lxml import html as lxml_html

    markup = decode_text(data)
    if not markup.strip():
        return [SourceDocument(uri=path, title=Path(path).name, text="")]
    parser = lxml_html.HTMLParser()
    try:
        try:
            tree = lxml_html.fromstring(markup, parser=parser)
        except ValueError:  # XHTML with an <?xml encoding=...?> declaration: lxml wants the bytes
            tree = lxml_html.fromstring(data, parser=parser)
    except Exception as exc:  # lxml raises several types for broken markup
        raise LoadError(f"cannot parse HTML: {exc}") from exc
    title = " ".join((tree.findtext(".//title") or "").split()) or Path(path).name
    truncated = any(e.type_name == "ERR_RESOURCE_LIMIT" for e in parser.error_log)  # nesting too deep
    headings = [] if truncated else [h.text_content().replace("\u00b6", "") for h in tree.iter(*HEADING_TAGS)]
    text = ""
    if not truncated:
        for element in tree.xpath("|".join(f"//{tag}" for tag in BOILERPLATE_TAGS)):
            if element.getparent() is not None:
                element.drop_tree()
        # fast=True skips trafilatura's second-opinion extractors: same text on documentation pages, ~40% quicker
        text = trafilatura.extract(tree, include_tables=True, include_comments=False, favor_recall=True,
                                   fast=True) or ""
    if not text.strip():  # all "boilerplate" to trafilatura, or too deep for the tree: the body's text
        text = html_body_text(markup)
    text = clean_text(text.replace("\u00b6", ""))  # Sphinx permalink marks
    # the extracted text keeps each heading on a line of its own: find those lines by the h1-h6 texts
    return [SourceDocument(uri=path, title=title, text=text, headings=heading_lines(text, headings))]


def load_pdf(path: str, data: bytes, options: LoadOptions) -> list[SourceDocument]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = (reader.metadata.title if reader.metadata else None) or ""
        outline = pdf_outline(reader)
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise LoadError(f"corrupt PDF: {exc}") from exc
    except Exception as exc:  # pypdf raises assorted errors on damaged files
        raise LoadError(f"corrupt PDF: {type(exc).__name__}: {exc}") from exc
    text, page_starts = join_pages(pages)
    title = str(meta_title).strip() or _title_from_text(text, Path(path).name)
    return [SourceDocument(uri=path, title=title, text=text, metadata={"pages": len(pages)}, page_starts=page_starts,
                           headings=outline_headings(outline, text, page_starts))]


def pdf_outline(reader) -> list[tuple[int, str]]:
    """(0-based page, title) of every entry of a PDF's outline (bookmarks), nested ones included, in
    outline order; none when it has no outline or a broken one (the text is still read)."""
    entries: list[tuple[int, str]] = []

    def walk(items) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item)
                continue
            page = reader.get_destination_page_number(item)
            if page is not None and page >= 0:
                entries.append((page, str(item.title or "")))

    try:
        walk(reader.outline)
    except Exception:  # pypdf raises assorted errors on a damaged outline
        return []
    return entries


def join_pages(pages: list[str]) -> tuple[str, list[int]]:
    """Page texts -> (the document's text, the offset at which each page starts in it).

    Pages are cleaned one by one and joined by a blank line; an empty page starts where the next
    page's text will, so the offset of any character maps back to the page it was printed on.
    """
    parts: list[str] = []
    starts: list[int] = []
    length = 0
    for raw in pages:
        page = clean_text(raw)
        separator = 2 if parts else 0
        starts.append(length + separator)
        if page:
            parts.append(page)
            length += separator + len(page)
    return "\n\n".join(parts), starts


def _record(path: str, n: int, record, options: LoadOptions, where: str = "") -> SourceDocument:
    """One JSON object -> a document keyed path#id (the id field) or path#n (its position)."""
    where = where or f"record {n}"
    if not isinstance(record, dict):
        raise LoadError(f"{where} is not a JSON object")
    if options.text_field not in record:
        raise LoadError(f"{where} has no text field {options.text_field!r} (choose one with --text-field)")
    key = n
    if options.id_field:
        if options.id_field not in record:
            raise LoadError(f"{where} has no id field {options.id_field!r}")
        key = record[options.id_field]
    title = str(record.get(options.title_field) or "") if options.title_field else ""
    skip = {options.text_field, options.id_field, options.title_field}
    metadata = {k: v for k, v in record.items() if k not in skip and isinstance(v, (str, int, float, bool))}
    text = clean_text(str(record[options.text_field] or ""))
    return SourceDocument(uri=f"{path}#{key}", title=title or f"{Path(path).name}#{key}", text=text, metadata=metadata)


def load_jsonl(path: str, data: bytes, options: LoadOptions) -> list[SourceDocument]:
    docs = []
    for n, line in enumerate(decode_text(data).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LoadError(f"line {n}: invalid JSON: {exc.msg}") from exc
        docs.append(_record(path, n, record, options, where=f"line {n}"))
    return docs


def load_json(path: str, data: bytes, options: LoadOptions) -> list[SourceDocument]:
    try:
        value = json.loads(decode_text(data))
    except json.JSONDecodeError as exc:
        raise LoadError(f"invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    records = value if isinstance(value, list) else [value]
    return [_record(path, n, r, options) for n, r in enumerate(records, 1)]


def load_csv(path: str, data: bytes, options: LoadOptions) -> list[SourceDocument]:
    """One document per row: the chosen text columns joined by blank lines, the rest as metadata."""
    text = decode_text(data)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    columns = reader.fieldnames or []
    if not columns:
        raise LoadError("CSV has no header row")
    wanted = options.text_columns or columns
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise LoadError(f"CSV has no column {', '.join(map(repr, missing))} (columns: {', '.join(columns)})")
    docs = []
    try:
        for n, row in enumerate(reader, 1):
            key = row.get(options.id_field) if options.id_field else None
            key = key or n
            body = "\n\n".join(str(row[c]).strip() for c in wanted if row.get(c) and str(row[c]).strip())
            title = str(row.get(options.title_field) or "") if options.title_field else ""
            metadata = {k: v for k, v in row.items() if k and k not in wanted and k != options.id_field and v}
            docs.append(SourceDocument(uri=f"{path}#{key}", title=title or f"{Path(path).name}#{key}",
                                       text=clean_text(body), metadata=metadata))
    except csv.Error as exc:
        raise LoadError(f"CSV row {n}: {exc}") from exc
    return docs


Loader = Callable[[str, bytes, LoadOptions], list[SourceDocument]]

LOADERS: dict[str, Loader] = {
    ".txt": load_text, ".text": load_text, ".rst": load_text,
    ".md": load_markdown, ".markdown": load_markdown,
    ".html": load_html, ".htm": load_html, ".xhtml": load_html,
    ".pdf": load_pdf,
    ".jsonl": load_jsonl, ".ndjson": load_jsonl,
    ".json": load_json,
    ".csv": load_csv, ".tsv": load_csv,
}


def loader_for(path: str) -> Loader | None:
    return LOADERS.get(Path(path).suffix.lower())


def load_bytes(path: str, data: bytes, options: LoadOptions | None = None, fmt: str | None = None) -> list[SourceDocument]:
    """Documents in ``data`` read as the format of ``path`` (or ``fmt``, an extension such as ".md")."""
    loader = LOADERS.get(fmt) if fmt else loader_for(path)
    if loader is None:
        raise LoadError(f"unsupported file type {Path(path).suffix or '(none)'}; "
                        f"supported: {', '.join(sorted(LOADERS))}")
    return loader(path, data, options or LoadOptions())
