"""Citations a person can check: passages remember their PDF page and their heading, from the loaders
through the store (including a store made before these columns existed) to the CLI, the JSON API and
`rag ask`."""
from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import PAGED_PDF_PAGES, PAGED_PDF_QUERY, write_paged_pdf

from rag.cli import main
from rag.ingest.chunking import Chunker, chunk
from rag.ingest.loaders import join_pages, load_bytes
from rag.ingest.locations import Location, heading_at, locate, location_label, markdown_headings, page_at
from rag.ingest.pipeline import ingest_paths
from rag.library import open_library
from rag.search.ranking import search
from rag.store.database import Store
from web import create_app

MARKDOWN = """# Field guide

An introduction to the guide and how to use it on a walk.

## Mosses

Mosses hold water like a sponge and carpet the shaded side of old stone walls.

```python
# Lichens in a code comment are not a heading
print("hello")
```

Lichens
-------

Lichens are a partnership of a fungus and an alga; the map lichen grows a millimetre a year.
"""

HTML = """<html><head><title>Harbour guide</title></head><body><nav><h2>Site menu</h2>Home | About</nav>
<article><h1>Harbour guide</h1><p>The harbour has two basins and a tidal gate that opens at high water.</p>
<h2>Moorings</h2><p>Visitors moor on the pontoon by the fish market; the harbour master collects the fees
each evening.</p><h3>Fuel</h3><p>Diesel is sold from the quay pump between eight and six.</p></article>
</body></html>"""


# --- the pieces: page and heading arithmetic --------------------------------------------------------

def test_pages_join_with_their_offsets_and_blank_pages_keep_their_number():
    text, starts = join_pages(["First page.  \r\n", "", "  Third page\n\n\n\nstill third. ", "Fourth."])
    assert text == "First page.\n\nThird page\n\nstill third.\n\nFourth."
    assert starts == [0, 13, 13, 39]
    assert [page_at(text.index(w), starts) for w in ("First", "Third", "still", "Fourth")] == [1, 3, 3, 4]
    assert locate([(0, 11), (5, 30)], starts, []) == [Location(page=1, last_page=1), Location(page=1, last_page=3)]
    assert locate([(0, 5)], [], []) == []  # a format that records neither: nothing stored
    assert location_label(3) == "p. 3" and location_label(3, 4) == "pp. 3\u20134"
    assert location_label(None, None, "Mosses") == "\u00a7 Mosses"
    assert location_label(12, 12, "Moorings") == "p. 12 \u00b7 \u00a7 Moorings"
    assert location_label(None) == ""


def test_markdown_headings_skip_code_fences_and_find_setext_headings():
    found = markdown_headings(MARKDOWN)
    assert [h for _, h in found] == ["Field guide", "Mosses", "Lichens"]
    for offset, heading in found:
        assert MARKDOWN[offset:].startswith(("#", heading))
    lichens = MARKDOWN.index("Lichens are")
    assert heading_at(lichens, found) == "Lichens"
    assert heading_at(MARKDOWN.index("Mosses hold"), found) == "Mosses"
    assert heading_at(0, found) == "Field guide"
    assert heading_at(0, [(5, "Later")]) is None


def test_html_headings_are_found_in_the_extracted_text():
    doc = load_bytes("harbour.html", HTML.encode())[0]
    assert [h for _, h in doc.headings] == ["Harbour guide", "Moorings", "Fuel"]  # the nav menu is not in the text
    for offset, heading in doc.headings:
        assert doc.text[offset:offset + len(heading)] == heading


def test_a_real_pdf_records_where_each_page_starts(tmp_path):
    path = tmp_path / "report.pdf"
    write_paged_pdf(path)
    doc = load_bytes(str(path), path.read_bytes())[0]
    assert len(doc.page_starts) == 4 and doc.metadata == {"pages": 4}
    assert doc.page_starts[1] == doc.page_starts[2]  # page 2 is blank
    for number, paragraphs in enumerate(PAGED_PDF_PAGES, 1):
        if paragraphs:
            first_words = paragraphs[0][:30]
            assert page_at(doc.text.index(first_words), doc.page_starts) == number
    assert page_at(doc.text.index("forty-two hives"), doc.page_starts) == 3


def test_passages_end_at_page_ends_and_never_overlap_across_them(tmp_path, encoder):
    path = tmp_path / "report.pdf"
    write_paged_pdf(path)
    doc = load_bytes(str(path), path.read_bytes())[0]
    for budget in (60, 100):
        spans = chunk(doc.text, encoder.tokenizer, budget, overlap=32, page_starts=doc.page_starts)
        places = locate(spans, doc.page_starts, [])
        assert all(p.page == p.last_page for p in places)  # every page is longer than a passage
        assert [p.page for p in places] == sorted(p.page for p in places)
        assert {p.page for p in places} == {1, 3, 4}
        assert all(n <= budget for n in Chunker(encoder.tokenizer, budget).count([doc.text[a:b] for a, b in spans]))
        covered = [False] * len(doc.text)
        for a, b in spans:
            covered[a:b] = [True] * (b - a)
        assert all(covered[i] or c.isspace() for i, c in enumerate(doc.text))  # no text is lost
        without = locate(chunk(doc.text, encoder.tokenizer, budget, overlap=32), doc.page_starts, [])
        assert any(p.page != p.last_page for p in without)  # what page-blind chunking would have cited


# --- end to end: ingest, CLI, API, ask --------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("located") / "docs"
    folder.mkdir()
    write_paged_pdf(folder / "survey.pdf")
    (folder / "field-guide.md").write_text(MARKDOWN, encoding="utf-8")
    (folder / "harbour.html").write_text(HTML, encoding="utf-8")
    (folder / "plain.txt").write_text("Plain notes\n\nA text file has no pages and no headings.", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def data_dir(corpus, encoder) -> Path:
    data = corpus.parent / "data"
    library = open_library(data, encoder=encoder)
    try:
        assert ingest_paths(library, [str(corpus)]).added == 4
    finally:
        library.close()
    return data


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_every_stored_passage_knows_its_place(data_dir, encoder):
    library = open_library(data_dir, encoder=encoder)
    try:
        docs = {Path(d.path).name: d for d in library.documents()}
        pdf = library.passages_of(docs["survey.pdf"].id)
        assert len(pdf) > 2 and all(1 <= p.page <= p.last_page <= 4 for p in pdf)
        assert pdf[0].page == 1 and pdf[-1].last_page == 4
        starts = library.page_starts(docs["survey.pdf"].id)
        assert all(p.page == page_at(p.start, starts) for p in pdf)
        assert all(p.heading is None for p in pdf)
        assert library.page_starts(docs["plain.txt"].id) == []
        assert [(p.page, p.heading) for p in library.passages_of(docs["plain.txt"].id)] == [(None, None)]

        hit = search(library, "map lichen grows a millimetre a year", k=1)[0]
        assert hit.document.title == "Field guide" and hit.passage.heading in ("Field guide", "Lichens")
        hit = search(library, "diesel from the quay pump", k=1)[0]
        assert hit.document.title == "Harbour guide" and hit.passage.heading in ("Harbour guide", "Moorings", "Fuel")
    finally:
        library.close()


def test_headings_follow_small_passages(tmp_path, encoder, corpus):
    """With passages smaller than a section, each one names the section it starts in."""
    library = open_library(tmp_path / "data", encoder=encoder)
    try:
        ingest_paths(library, [str(corpus / "field-guide.md"), str(corpus / "harbour.html")], chunk_tokens=24,
                     overlap=0)
        docs = {Path(d.path).name: d for d in library.documents()}
        text = library.document_text(docs["field-guide.md"].id)
        for passage in library.passages_of(docs["field-guide.md"].id):
            assert passage.heading == heading_at(passage.start, markdown_headings(text))
        passages = library.passages_of(docs["field-guide.md"].id)
        assert next(p for p in passages if "sponge" in p.text).heading == "Mosses"
        assert next(p for p in passages if "map lichen" in p.text).heading == "Lichens"
        diesel = next(p for p in library.passages_of(docs["harbour.html"].id) if "Diesel" in p.text)
        assert diesel.heading == "Fuel"
    finally:
        library.close()


def test_search_json_and_text_name_the_pdf_page(data_dir):
    data = json.loads(run_cli("search", PAGED_PDF_QUERY, "-k", "3", "--json", "--data", str(data_dir)))
    top = data["results"][0]
    assert top["document"]["path"].endswith("survey.pdf")
    assert "forty-two hives" in top["text"]
    assert top["page"] == 3 and top["last_page"] in (3, 4) and top["heading"] is None
    assert set(top) >= {"rank", "score", "passage_id", "text", "document", "page", "last_page", "heading"}

    text = run_cli("search", PAGED_PDF_QUERY, "-k", "1", "--data", str(data_dir))
    assert "survey.pdf" in text and ("p. 3" in text or "pp. 3\u20134" in text)

    plain = json.loads(run_cli("search", "text file has no pages", "-k", "1", "--mode", "keyword", "--json",
                               "--data", str(data_dir)))["results"][0]
    assert plain["document"]["path"].endswith("plain.txt")
    assert plain["page"] is None and plain["last_page"] is None and plain["heading"] is None


def test_api_search_and_document_carry_pages(data_dir, encoder):
    client = create_app({"DATA_DIR": str(data_dir), "ENCODER_OBJECT": encoder, "API_TOKEN": None}).test_client()
    results = client.get("/api/search", query_string={"q": PAGED_PDF_QUERY, "k": 3}).get_json()["results"]
    top = results[0]
    assert top["document"]["path"].endswith("survey.pdf") and top["page"] == 3

    document = client.get(f"/api/documents/{top['document']['id']}").get_json()
    assert len(document["page_starts"]) == 4
    passage = next(p for p in document["passages"] if p["id"] == top["passage_id"])
    assert passage["page"] == 3 and document["page_starts"][2] <= passage["start"]

    page = client.get(f"/documents/{top['document']['id']}?passage={top['passage_id']}&page=3").get_data(as_text=True)
    assert page.count('class="page-marker"') == 4 and 'id="page-3"' in page
    assert "p. 3" in page or "pp. 3\u20134" in page
    # the highlight opens on page 3: after that page's marker, before the next one
    assert page.index('id="page-3"') < page.index('<mark id="highlight"') < page.index('id="page-4"')
    assert "forty-two hives" in page


@pytest.mark.parametrize("reader", ["extract", "prompt"])
def test_ask_json_cites_the_page(data_dir, generator, reader):
    answer = json.loads(run_cli("ask", PAGED_PDF_QUERY, "-k", "2", "--reader", reader, "--json",
                                "--data", str(data_dir)))
    assert answer["citations"], answer["answer"]
    assert all(set(c) >= {"n", "passage_id", "document", "page", "last_page", "heading"} for c in answer["citations"])
    cited = [c for c in answer["citations"] if c["document"]["path"].endswith("survey.pdf")]
    assert cited and all(c["page"] == 3 for c in cited)
    if reader == "extract":  # the 270M generator copies "32" from a neighbouring sentence of the same page
        assert "42" in answer["answer"] or "forty" in answer["answer"].lower()


# --- an existing store made before pages and headings were recorded --------------------------------

OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL UNIQUE, source TEXT NOT NULL,
    source_hash TEXT NOT NULL, title TEXT NOT NULL DEFAULT '', collection TEXT NOT NULL DEFAULT 'default',
    content_hash TEXT NOT NULL, size INTEGER NOT NULL DEFAULT 0, mtime REAL, metadata TEXT NOT NULL DEFAULT '{}',
    ingested_at TEXT NOT NULL, text TEXT, duplicate_of INTEGER REFERENCES documents(id));
CREATE INDEX documents_source ON documents(source);
CREATE INDEX documents_content ON documents(collection, content_hash);
CREATE INDEX documents_duplicate ON documents(duplicate_of);
CREATE TABLE passages (id INTEGER PRIMARY KEY AUTOINCREMENT, document_id INTEGER NOT NULL REFERENCES documents(id),
    ord INTEGER NOT NULL, text TEXT NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL);
CREATE INDEX passages_document ON passages(document_id, ord);
CREATE TABLE embeddings (passage_id INTEGER PRIMARY KEY, vector BLOB NOT NULL);
CREATE VIRTUAL TABLE passages_fts USING fts5(title, body, tokenize='porter unicode61');
"""


def make_old_store(path: Path, encoder, pdf: Path) -> str:
    """A rag.db as the previous release wrote it: a text note and ``pdf``, one passage each, no pages."""
    note = "Old notes\n\nThe ferry to the island leaves from the north pier at seven every morning."
    pdf_text = load_bytes(str(pdf), pdf.read_bytes())[0].text
    rows = [("/old/notes.txt", "h", "Old notes", note),
            (str(pdf), hashlib.sha256(pdf.read_bytes()).hexdigest(), "Field survey report", pdf_text)]
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [("encoder", encoder.name), ("dim", str(encoder.dim)),
                                                          ("generation", "1")])
    for n, (source, source_hash, title, text) in enumerate(rows, 1):
        conn.execute("INSERT INTO documents (path, source, source_hash, title, content_hash, size, metadata, "
                     "ingested_at, text) VALUES (?, ?, ?, ?, ?, ?, '{}', '2024-01-01T00:00:00+00:00', ?)",
                     (source, source, source_hash, title, f"c{n}", len(text), text))
        conn.execute('INSERT INTO passages (document_id, ord, text, start, "end") VALUES (?, 0, ?, 0, ?)',
                     (n, text, len(text)))
        conn.execute("INSERT INTO embeddings VALUES (?, ?)", (n, encoder.encode([text])[0].astype(np.float32).tobytes()))
        conn.execute("INSERT INTO passages_fts (rowid, title, body) VALUES (?, ?, ?)", (n, title, text))
    conn.commit()
    conn.close()
    return note


def columns(path: Path, table: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    finally:
        conn.close()


def test_an_old_store_is_upgraded_in_place(tmp_path, encoders):
    encoder = encoders["torch"]  # a store from before encoder back ends holds torch vectors
    data = tmp_path / "data"
    data.mkdir()
    db = data / "rag.db"
    pdf = tmp_path / "survey.pdf"
    write_paged_pdf(pdf)
    note = make_old_store(db, encoder, pdf)
    assert "page" not in columns(db, "passages")

    library = open_library(data, encoder=encoder)
    try:
        assert [c for c in columns(db, "passages") if c != "text_hash"][-3:] == ["page", "last_page", "heading"]
        assert "text_hash" in columns(db, "passages")  # and the hash that repeated passages share (rag.store.database)
        assert columns(db, "documents")[-1] == "page_starts"
        old = library.passages([1])[1]
        assert old.text == note and (old.page, old.last_page, old.heading) == (None, None, None)
        assert library.page_starts(1) == []
        hit = search(library, "when does the ferry leave", k=1)[0]  # the index is rebuilt from stored vectors
        assert hit.passage.id == 1 and hit.to_json()["page"] is None

        # the stored PDF is read again (its pages were never recorded); the note stays as it was
        report = ingest_paths(library, [str(pdf)])
        assert (report.updated, report.skipped, report.added) == (1, 0, 0)
        assert ingest_paths(library, [str(pdf)]).skipped == 1  # ... once
        top = search(library, PAGED_PDF_QUERY, k=1)[0]
        assert top.document.path == str(pdf) and top.passage.page == 3
        assert library.passages([1])[1].text == note
    finally:
        library.close()

    Store(db).close()  # opening an upgraded store again changes nothing
    assert columns(db, "passages").count("page") == 1
    out = json.loads(run_cli("search", "ferry north pier", "-k", "1", "--json", "--data", str(data)))
    assert out["results"][0]["passage_id"] == 1 and out["results"][0]["page"] is None
